"""GPT-2 / LLaMA causal LMs used as diffusion models: full attention and the logit shift."""

from __future__ import annotations

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import dlm


def _tiny_hf(kind: str, tmp_path, mask_token_id: int = 60):
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                      mask_token_id=mask_token_id, eos_token_id=61, bos_token_id=62)
    else:
        cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                       mask_token_id=mask_token_id, eos_token_id=61, bos_token_id=62)
    net = transformers.AutoModelForCausalLM.from_config(cfg)
    net.save_pretrained(tmp_path / kind)
    return tmp_path / kind, net.eval()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_shifted_full_attention(kind, tmp_path):
    path, raw_net = _tiny_hf(kind, tmp_path)
    model = dlm.load(path)
    assert model.facts.shifted and model.facts.mask_id == 60 and model.facts.eos_ids == (61,)
    ids = torch.randint(0, 60, (2, 10), generator=torch.Generator().manual_seed(0))
    logits = model(ids).logits
    assert logits.shape == (2, 10, 64)
    # bidirectional: changing the last token changes predictions at earlier positions
    ids2 = ids.clone()
    ids2[:, -1] = (ids2[:, -1] + 1) % 60
    assert not torch.allclose(model(ids2).logits[:, 2], logits[:, 2])
    # shift: position i (>= 1) reads the raw output at i - 1, computed with full attention
    full = torch.zeros(2, 1, 10, 10)
    raw = raw_net(input_ids=ids, attention_mask=full).logits
    torch.testing.assert_close(logits[:, 1:], raw[:, :-1])
    torch.testing.assert_close(logits[:, 0], raw[:, 0])
    # logits_from returns the same aligned slice
    torch.testing.assert_close(model(ids, logits_from=4).logits, logits[:, 4:])
    torch.testing.assert_close(model(ids, logits_from=1).logits, logits[:, 1:])


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_padding_is_honoured(kind, tmp_path):
    path, _ = _tiny_hf(kind, tmp_path)
    model = dlm.load(path)
    ids = torch.randint(0, 60, (1, 8), generator=torch.Generator().manual_seed(2))
    padded = torch.cat([torch.full((1, 3), 61), ids], dim=1)
    am = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 8, dtype=torch.long)], dim=1)
    # shifted: position 3 (the first real token) is predicted from a pad slot; from 4 on all is real
    a = model(padded, attention_mask=am).logits[:, 4:]
    b = model(padded.clone().index_fill_(1, torch.tensor([0, 1, 2]), 5), attention_mask=am).logits[:, 4:]
    torch.testing.assert_close(a, b)  # pad contents are invisible
    # and padding moves no position: the real tokens' logits equal the unpadded ones (GPT-2's
    # learned absolute positions included)
    torch.testing.assert_close(a, model(ids).logits[:, 1:], rtol=1e-5, atol=1e-5)


def test_generate_with_shifted_model(tmp_path):
    path, _ = _tiny_hf("llama", tmp_path)
    model = dlm.load(path)
    prompt = torch.tensor([[62, 5, 6, 7]])
    out = dlm.generate(model, prompt, steps=4, gen_length=8, block_length=4, return_dict=True)
    assert out.sequences.shape == (1, 12) and out.nfe == 4
    assert not (out.generated == 60).any()
    with pytest.raises(dlm.DLMError, match="at least one token"):
        dlm.generate(model, torch.zeros(1, 0, dtype=torch.long), steps=4, gen_length=4)


def test_gpt2_position_limit_is_a_clear_error(tmp_path):
    path, _ = _tiny_hf("gpt2", tmp_path)  # n_positions = 64
    model = dlm.load(path)
    with pytest.raises(dlm.DLMError, match="exceeds this model's 64 positions"):
        dlm.generate(model, torch.tensor([[62, 5]]), steps=64, gen_length=64)


def test_diffugpt_parameter_names_are_mapped(tmp_path):
    path, raw_net = _tiny_hf("gpt2", tmp_path)
    tensors = load_file(str(path / "model.safetensors"))
    renamed = {}
    for k, v in tensors.items():
        if k == "transformer.wte.weight":
            renamed["embed_tokens.weight"] = v
        elif k.startswith("transformer."):
            renamed["denoise_model." + k[len("transformer."):]] = v
    renamed["denoise_model.h.0.attn.masked_bias"] = torch.tensor(-1e4)  # old GPT-2 exports carry these buffers
    (path / "model.safetensors").unlink()
    save_file(renamed, str(path / "model.safetensors"), metadata={"format": "pt"})
    model = dlm.load(path)
    ids = torch.randint(0, 60, (1, 6))
    raw = raw_net(input_ids=ids, attention_mask=torch.zeros(1, 1, 6, 6)).logits
    torch.testing.assert_close(model(ids).logits[:, 1:], raw[:, :-1])


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_requested_dtype_wins_over_config_dtype(kind, tmp_path):
    import json

    path, raw_net = _tiny_hf(kind, tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["torch_dtype"] = cfg["dtype"] = "bfloat16"
    (path / "config.json").write_text(json.dumps(cfg))
    model = dlm.load(path, dtype="float32")
    assert model.dtype == torch.float32
    want = raw_net.get_input_embeddings().weight
    assert torch.equal(model.net.get_input_embeddings().weight, want)  # not rounded through bf16


def test_tied_head_keeps_the_input_embedding(tmp_path):
    path, raw_net = _tiny_hf("gpt2", tmp_path)
    tensors = load_file(str(path / "model.safetensors"))
    tensors["lm_head.weight"] = torch.zeros_like(tensors["transformer.wte.weight"])  # a stale head copy
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    model = dlm.load(path)
    assert torch.equal(model.net.get_input_embeddings().weight, raw_net.get_input_embeddings().weight)


def test_shifted_model_rejects_a_mask_as_first_prompt_token(tmp_path):
    path, _ = _tiny_hf("llama", tmp_path)
    model = dlm.load(path)
    with pytest.raises(dlm.DLMError, match="first prompt token"):
        dlm.generate(model, torch.tensor([[60, 5, 6]]), steps=4, gen_length=4)
    with pytest.raises(dlm.DLMError, match="first prompt token"):  # left-padded: the first real token
        dlm.generate(model, torch.tensor([[61, 60, 6]]), torch.tensor([[0, 1, 1]]), steps=4, gen_length=4)
