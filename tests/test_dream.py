"""Dream checkpoints: loaded through transformers' Qwen2 classes, checked against Dream's own code.

The fixtures in tests/fixtures/dream/ are tiny random checkpoints in Dream's release layout and
the logits Dream's ``modeling_dream.py`` / ``generation_utils.py`` computed on them (see
scripts/derive_dream_fixtures.py and the fixture README).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import dlm
from dlm.cli import main
from dlm.models import dream
from dlm.models.registry import resolve_facts

HERE = Path(__file__).resolve().parent / "fixtures" / "dream"
CASES = json.loads((HERE / "manifest.json").read_text())["cases"]

# config.json of Dream-org/Dream-v0-Instruct-7B (the Base model's differs in no field used here)
RELEASE_CONFIG = {
    "architectures": ["DreamModel"], "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
    "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 3584,
    "initializer_range": 0.02, "intermediate_size": 18944, "mask_token_id": 151666,
    "max_position_embeddings": 131072, "max_window_layers": 28, "model_type": "Dream", "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "pad_token_id": 151643, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.46.2", "use_cache": False, "use_sliding_window": False,
    "vocab_size": 152064,
}


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return load_file(str(HERE / "expected_logits.safetensors"))


@pytest.fixture(scope="module")
def tiny() -> dlm.DiffusionLM:
    return dlm.load(HERE / "tiny")


def _real_source(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: positions whose shifted logits come from a real (non-pad) token, i.e. i and i - 1 real."""
    real = attention_mask.bool()
    src = real.clone()
    src[:, 1:] &= real[:, :-1]
    return src


@pytest.mark.parametrize("case", CASES)
def test_logits_match_dreams_own_code(case, expected):
    model = dlm.load(HERE / case.split(".")[0])
    ids = expected[f"{case}.input_ids"]  # (B, L): [prompt | mask * 6]
    am = expected[f"{case}.attention_mask"]  # (B, L)
    want = expected[f"{case}.logits"]  # (B, L, V), shifted by Dream's generation_utils
    got = model(ids, attention_mask=am).logits
    assert got.shape == want.shape
    keep = _real_source(am)
    if case.endswith("padded"):
        assert not keep.all()  # the padded row really has positions to skip
    torch.testing.assert_close(got[keep], want[keep], rtol=1e-4, atol=1e-4)
    # the answer slice is the same through logits_from (the path samplers use)
    torch.testing.assert_close(model(ids, attention_mask=am, logits_from=7).logits, got[:, 7:])


def test_facts_and_network(tiny):
    f = tiny.facts
    assert (f.model_type, f.shifted, f.mask_id, f.eos_ids, f.bos_id, f.pad_id) == ("Dream", True, 90, (91,), 91, 91)
    assert f.max_length == 128 and f.vocab_size == 96
    assert type(tiny.net).__name__ == "Qwen2ForCausalLM"
    cfg = tiny.net.config
    assert (cfg.sliding_window, cfg.rms_norm_eps, cfg.rope_parameters["rope_theta"]) == (None, 1e-6, 1e6)
    # Dream's tensor names are Qwen2's: nothing renamed, nothing left over
    index = json.loads((HERE / "tiny" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tiny.net.state_dict())


def test_tied_head_is_the_embedding():
    model = dlm.load(HERE / "tiny_tied")
    assert model.net.lm_head.weight.data_ptr() == model.net.model.embed_tokens.weight.data_ptr()


def test_release_config_and_family_defaults():
    hf = dream.qwen2_config(RELEASE_CONFIG)
    assert hf == {
        "model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
        "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_act": "silu",
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "rope_theta": 1e6, "tie_word_embeddings": False,
        "attention_dropout": 0.0, "use_sliding_window": False, "sliding_window": None, "use_cache": False,
    }
    facts = resolve_facts("Dream", RELEASE_CONFIG, 152064)
    assert (facts.shifted, facts.mask_id, facts.eos_ids, facts.pad_id, facts.bos_id) == (
        True, 151666, (151643,), 151643, 151643)
    assert facts.max_length == 131072
    bare = resolve_facts("Dream", {}, 152064)  # a config without the ids: the family's defaults
    assert (bare.mask_id, bare.eos_ids, bare.pad_id) == (151666, (151643,), 151643)


def test_remote_code_is_never_run(tmp_path):
    ckpt = shutil.copytree(HERE / "tiny", tmp_path / "tiny")
    sentinel = tmp_path / "ran"
    for name in ("modeling_dream.py", "configuration_dream.py"):  # what auto_map names
        (ckpt / name).write_text(f"open({str(sentinel)!r}, 'w').write('{name}')\nraise SystemExit('remote code ran')\n")
    model = dlm.load(ckpt)
    assert model.facts.model_type == "Dream" and not sentinel.exists()


@pytest.mark.parametrize("change, message", [
    ({"hidden_size": None}, "required Dream field 'hidden_size' is missing"),
    ({"num_attention_heads": 5}, "'hidden_size' (32) is not divisible by num_attention_heads (5)"),
    ({"num_key_value_heads": 3}, "'num_key_value_heads' (3) does not divide num_attention_heads (4)"),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "'rope_scaling'"),
    ({"rms_norm_eps": "tiny"}, "field 'rms_norm_eps' = 'tiny' must be a finite number"),
    ({"tie_word_embeddings": "no"}, "field 'tie_word_embeddings' = 'no' must be true or false"),
    ({"hidden_act": "wobble"}, "transformers cannot build this config"),
])
def test_bad_config_is_one_clear_line(tmp_path, change, message):
    ckpt = shutil.copytree(HERE / "tiny", tmp_path / "tiny")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(change)
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(dlm.CheckpointError) as e:
        dlm.load(ckpt)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(ckpt / "config.json") in str(e.value)


def test_missing_tensor_is_a_checkpoint_error(tmp_path):
    ckpt = shutil.copytree(HERE / "tiny", tmp_path / "tiny")
    name = "model.layers.1.self_attn.k_proj.bias"
    shard = ckpt / json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"][name]
    tensors = load_file(str(shard))
    del tensors[name]
    save_file(tensors, str(shard))
    with pytest.raises(dlm.CheckpointError, match=f"'{name}' is missing"):
        dlm.load(ckpt)


def test_llada_sampler_on_a_padded_batch(tiny):
    prompts = [[5, 17, 42, 8, 30], [12, 3]]
    ids = torch.tensor([prompts[0], [91, 91, 91] + prompts[1]])  # (2, 5), row 1 left-padded
    am = torch.tensor([[1] * 5, [0, 0, 0, 1, 1]])
    out = dlm.generate(tiny, ids, am, sampler="llada", steps=8, gen_length=8, block_length=4, return_dict=True)
    assert out.sequences.shape == (2, 13) and out.nfe == 8
    assert torch.equal(out.sequences[:, :5], ids) and not (out.generated == 90).any()
    # padding is invisible: the padded row decodes as it does alone (greedy, so no RNG involved)
    alone = dlm.generate(tiny, torch.tensor([prompts[1]]), sampler="llada", steps=8, gen_length=8, block_length=4)
    assert torch.equal(out.sequences[1, 5:], alone[0, 2:])


def test_info_shows_dream_facts(capsys):
    assert main(["info", str(HERE / "tiny"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model_type"] == "Dream" and info["architecture"] == "Qwen2ForCausalLM"
    assert info["shifted"] is True and info["mask_id"] == 90 and info["eos_ids"] == [91] and info["pad_id"] == 91
    assert info["family"].startswith("Dream") and info["max_length"] == 128
    assert info["weight_files"] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]


def test_saved_model_is_still_a_dream_checkpoint(tiny, tmp_path):
    out = dlm.save_pretrained(tiny, tmp_path / "saved")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "Dream" and cfg["architectures"] == ["DreamModel"]
    assert set(load_file(str(out / "model.safetensors"))) == set(tiny.net.state_dict())
    ids = torch.tensor([[5, 17, 42, 90, 90]])
    torch.testing.assert_close(dlm.load(out)(ids).logits, tiny(ids).logits)
