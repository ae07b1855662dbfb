"""LoRA adapters (dlm train --lora, dlm.load of an adapter directory) for every model family."""

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import dlm
from dlm.errors import CheckpointError, DLMError
from dlm.models.loading import save_pretrained
from dlm.train.build import ModelSize, new_model, training_memory
from dlm.train.trainer import Trainer, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "data" / "tokenizer"
TINY = ModelSize(d_model=32, n_layers=2, n_heads=2, mlp_hidden=64, max_positions=256)


pytestmark = pytest.mark.usefixtures("tokenised_cache")  # the shared test cache (conftest)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Tiny random base models saved as directories: a LLaDA diffusion model and a llama causal LM."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER), local_files_only=True)
    tok.chat_template = None  # base models: SFT adds dlm's template
    root = tmp_path_factory.mktemp("bases")
    for name, arch, objective, seed in (("llada", "llada", "mdm", 1), ("ar", "llama", "causal", 2),
                                        ("ar_other", "llama", "causal", 3)):
        save_pretrained(new_model(arch, TINY, tok, seed=seed, objective=objective), root / name)
    return root


FAMILIES = {  # family -> base, objective, task
    "llada_mdm": ("llada", "mdm", "pretrain"),
    "llama_a2d": ("ar", "a2d", "pretrain"),
    "llama_causal_sft": ("ar", "causal", "sft"),
}


def _cfg(tmp_path, data_dir, bases, name, family="llama_a2d", **kw):
    base, objective, task = FAMILIES[family]
    settings = dict(out=str(tmp_path / name), data=str(data_dir), init=str(bases / base), objective=objective,
                    task=task, seq_len=96 if task == "sft" else 48, answer_length=16, batch_size=4, max_steps=4,
                    eval_every=2, eval_batches=1, save_every=10, warmup_steps=1, lr=1e-2, progress=False, lora=4)
    settings.update(kw)
    return TrainConfig(**settings)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits  # (B, L, V)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lora_run_saves_an_adapter_that_loads_as_the_trained_model(tmp_path, data_dir, bases, family, capsys):
    cfg = _cfg(tmp_path, data_dir, bases, "run", family)
    trainer = Trainer(cfg)
    assert "memory estimate for 4 x" in capsys.readouterr().err
    assert trainer.train()["finished"]
    out = Path(cfg.out)
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "dlm_adapter.json", "tokenizer.json", "README.md",
            "training_log.json"} <= names and "model.safetensors" not in names and "checkpoint" not in names
    base_dir = bases / FAMILIES[family][0]
    adapter_bytes = (out / "adapter_model.safetensors").stat().st_size
    assert adapter_bytes < 0.1 * (base_dir / "model.safetensors").stat().st_size

    # only the adapter (and, for a causal base turned diffusion model, the mask row) trained
    net = trainer.model.net
    trained = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trained and all(".lora_" in n or "trainable_tokens_delta" in n for n in trained)
    assert any("trainable_tokens_delta" in n for n in trained) == (family == "llama_a2d")
    base = dlm.load(base_dir)
    unloaded = copy.deepcopy(net).unload()  # the base layers without their adapters: untouched
    for k, v in base.net.state_dict().items():
        torch.testing.assert_close(unloaded.state_dict()[k], v, rtol=0, atol=0, msg=k)

    meta = json.loads((out / "dlm_adapter.json").read_text())
    assert meta["base"] == str(base_dir) and set(meta["base_sha256"]) == {"model.safetensors"}
    assert meta["lora"]["rank"] == 4 and meta["lora"]["alpha"] == 8.0
    trainer.model.eval()
    ids = torch.tensor([[1] + list(range(10, 30)) + [3, 3, 3]])  # (1, 24): bos, text, mask tokens
    want = _logits(trainer.model, ids)
    merged, apart = dlm.load(out), dlm.load(out, merge=False)
    assert type(merged.net).__name__ == type(base.net).__name__ and type(apart.net).__name__ == "PeftModel"
    torch.testing.assert_close(_logits(merged, ids), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_logits(apart, ids), want, rtol=0, atol=0)
    assert not torch.allclose(_logits(base, ids), want, atol=1e-3)  # the adapter changed the model
    if family == "llama_a2d":  # the mask row trained, no other embedding row
        rows = (merged.net.get_input_embeddings().weight != base.net.get_input_embeddings().weight).any(1)
        assert rows.nonzero().flatten().tolist() == [3] == meta["lora"]["trainable_token_indices"]
        assert meta["facts"] == {"causal": False} and not merged.facts.causal and merged.facts.mask_id == 3
    if family == "llama_causal_sft":
        assert merged.facts.causal and merged.config["dlm_generation"] == {"gen_length": 16}
        assert merged.tokenizer.chat_template and not base.tokenizer.chat_template
    assert merged.config["dlm_training"]["steps"] == 4 and merged.path == str(out)
    for model in (merged, apart):  # both generate
        prompt = torch.tensor([model.encode_prompt("A tool.")])
        assert dlm.generate(model, prompt, gen_length=8).shape == (1, prompt.shape[1] + 8)


def test_base_with_other_weights_is_refused(tmp_path, data_dir, bases):
    cfg = _cfg(tmp_path, data_dir, bases, "run", max_steps=1, warmup_steps=0)
    Trainer(cfg).train()
    moved = tmp_path / "moved"
    shutil.copytree(cfg.out, moved)
    meta = json.loads((moved / "dlm_adapter.json").read_text())
    recorded = meta["base_sha256"]["model.safetensors"]
    meta["base"] = str(bases / "ar_other")  # same shapes, other weights
    (moved / "dlm_adapter.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"sha256 {recorded} for model.safetensors, but .*ar_other"):
        dlm.load(moved)
    meta["base"] = str(tmp_path / "gone")
    (moved / "dlm_adapter.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="its base model .*gone is not found"):
        dlm.load(moved)
    with pytest.raises(DLMError, match="not an adapter directory"):
        dlm.load(bases / "ar", merge=False)


@pytest.mark.parametrize("family", ["llada_mdm", "llama_a2d"])
def test_interrupted_lora_run_resumes_exactly(tmp_path, data_dir, bases, family):
    Trainer(_cfg(tmp_path, data_dir, bases, "straight", family, max_steps=3, lora_dropout=0.1)).train()
    cut = Trainer(_cfg(tmp_path, data_dir, bases, "cut", family, max_steps=3, lora_dropout=0.1,
                       max_minutes=1e-9)).train()
    assert not cut["finished"] and cut["step"] == 1
    ckpt = tmp_path / "cut" / "checkpoint"
    assert (ckpt / "lora_base.json").exists()  # the checkpoint holds the adapter, not the base
    assert (ckpt / "model.safetensors").stat().st_size < 0.1 * (bases / "ar" / "model.safetensors").stat().st_size
    with pytest.raises(DLMError, match=r"different settings \(--lora 4 -> 8; --lora-alpha 8.0 -> 16.0\)"):
        Trainer(_cfg(tmp_path, data_dir, bases, "cut", family, max_steps=3, lora_dropout=0.1, lora=8))
    resumed = Trainer(_cfg(tmp_path, data_dir, bases, "cut", family, max_steps=3, lora_dropout=0.1)).train()
    assert resumed["finished"] and resumed["step"] == 3
    from safetensors.torch import load_file

    a = load_file(tmp_path / "straight" / "adapter_model.safetensors")
    b = load_file(tmp_path / "cut" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_resume_on_other_base_weights_is_refused(tmp_path, data_dir, bases):
    base = tmp_path / "base"
    shutil.copytree(bases / "ar", base)
    cfg = _cfg(tmp_path, data_dir, bases, "cut", init=str(base), max_steps=3)
    cut = Trainer(_cfg(tmp_path, data_dir, bases, "cut", init=str(base), max_steps=3, max_minutes=1e-9)).train()
    assert not cut["finished"]
    shutil.copy(bases / "ar_other" / "model.safetensors", base / "model.safetensors")
    with pytest.raises(CheckpointError, match="checkpoint was written over other base weights than .*base has now"):
        Trainer(cfg).train()


def test_continue_finished_lora_run_starts_from_its_adapter(tmp_path, data_dir, bases):
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    Trainer(_cfg(tmp_path, data_dir, bases, "run", max_steps=2)).train()
    first = load_file(tmp_path / "run" / "adapter_model.safetensors")
    with pytest.raises(DLMError, match=r"cannot change \(--lora 4 -> 8; --lora-alpha 8.0 -> 16.0\)"):
        Trainer(_cfg(tmp_path, data_dir, bases, "run", max_steps=4, lora=8, continue_finished=True))
    trainer = Trainer(_cfg(tmp_path, data_dir, bases, "run", max_steps=4, continue_finished=True))
    now = get_peft_model_state_dict(trainer.model.net)
    assert now.keys() == first.keys()
    for k in first:
        torch.testing.assert_close(now[k], first[k], rtol=0, atol=0, msg=k)
    result = trainer.train()
    assert [e["step"] for e in result["log"]] == [1, 2, 3, 4]
    second = load_file(tmp_path / "run" / "adapter_model.safetensors")
    assert any(not torch.equal(first[k], second[k]) for k in first)
    assert dlm.load(tmp_path / "run").config["dlm_training"]["continued_from_step"] == 2


@pytest.mark.parametrize("family", ["llada_mdm", "llama_a2d"])
def test_gradient_checkpointing_with_lora_gives_the_same_adapter(tmp_path, data_dir, bases, family):
    from safetensors.torch import load_file

    Trainer(_cfg(tmp_path, data_dir, bases, "plain", family, max_steps=2)).train()
    trainer = Trainer(_cfg(tmp_path, data_dir, bases, "ckpt", family, max_steps=2, gradient_checkpointing=True))
    arch = trainer.model.net.get_base_model()
    assert arch.gradient_checkpointing if family == "llada_mdm" else arch.is_activation_checkpointing
    trainer.train()
    a = load_file(tmp_path / "plain" / "adapter_model.safetensors")
    b = load_file(tmp_path / "ckpt" / "adapter_model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_memory_estimate_counts_optimizer_state_for_trainable_parameters_only(tmp_path, data_dir, bases, capsys):
    full = Trainer(_cfg(tmp_path, data_dir, bases, "full", lora=None, lora_alpha=None))
    assert re.search(r"memory estimate .*: (\S+) parameters, \1 trainable; weights 1 MiB \+ gradients 1 MiB \+ AdamW "
                     r"state 2 MiB \+ activations 25 MiB = 29 MiB", capsys.readouterr().err)
    lora = Trainer(_cfg(tmp_path, data_dir, bases, "lora"))
    assert re.search(r"memory estimate .*: \S+ parameters, 4.38K trainable; weights 1 MiB \+ gradients 17 KiB \+ AdamW "
                     r"state 34 KiB \+ activations 25 MiB = 26 MiB", capsys.readouterr().err)
    a, b = (training_memory(t.model, 48, 4, False) for t in (full, lora))
    n_lora = sum(p.numel() for p in lora.model.net.parameters() if p.requires_grad)
    assert a["trainable"] == a["parameters"] and a["optimizer"] == 8 * a["parameters"]
    # 2 layers x rank 4 x (in + out) of q, k, v, o (32 -> 32) and gate, up, down (32 <-> 64); the mask row
    assert b["trainable"] == n_lora == 2 * 4 * (4 * 64 + 3 * 96) + 32 and b["optimizer"] == 8 * n_lora
    assert b["gradients"] == 4 * n_lora and b["weights"] == 4 * b["parameters"]
    assert b["activations"] == a["activations"]
    assert b["total"] == b["weights"] + b["gradients"] + b["optimizer"] + b["activations"]


def test_cli_lora_run_in_bf16_and_dlm_info(tmp_path, data_dir, bases, capsys):
    from safetensors import safe_open

    from dlm.cli import describe, main

    out = tmp_path / "o"
    argv = ["train", "--out", str(out), "--init", str(bases / "llada"), "--data", str(data_dir), "--lora", "2",
            "--lora-targets", "q_proj, v_proj", "--lora-alpha", "4", "--seq-len", "32", "--batch-size", "2",
            "--max-steps", "2", "--warmup-steps", "1", "--eval-every", "2", "--eval-batches", "1", "--save-dtype",
            "bfloat16", "--no-progress"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "memory estimate for 2 x 32 tokens per micro-step" in err and "512 trainable" in err  # 2 x 2 x 2 x 64
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"} and len(list(f.keys())) == 8
    assert "a LoRA adapter (rank 2, alpha 4.0" in (out / "README.md").read_text()
    info = describe(str(out))
    assert info["weight_files"] == ["adapter_model.safetensors"] and info["architecture"] == "LLaDAModelLM"
    assert info["adapter_of"] == json.loads((out / "dlm_adapter.json").read_text())["base"]
    assert main(argv) == 0 and "already holds this finished run" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--lora", "4"], "--lora trains an adapter on an existing model: pass --init"),
    (["--lora-alpha", "8"], "--lora-alpha is for a LoRA adapter: pass --lora RANK too"),
    (["--lora", "0", "--init", "tiny-ar"], "--lora (the adapter's rank) must be >= 1"),
    (["--lora", "4", "--init", "tiny-ar", "--lora-dropout", "1"], "--lora-dropout must be in [0, 1)"),
    (["--lora", "4", "--init", "tiny-ar", "--lora-targets", "q_proj,lm_head", "--objective", "causal"],
     "--lora-targets lm_head: no such linear layer in the transformer blocks of tiny-ar (it has: down_proj"),
])
def test_cli_lora_bad_input(capsys, tmp_path, argv, message):
    from dlm.cli import main

    code = main(["train", "--out", str(tmp_path / "o"), "--no-progress", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_weight_digest_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    import os

    from dlm import provenance

    monkeypatch.setenv("DLM_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"a" * 1000)
    calls = []
    real = provenance.file_sha256
    monkeypatch.setattr(provenance, "file_sha256", lambda p: calls.append(p) or real(p))
    first = provenance.cached_file_sha256(f)
    assert first == real(f) and provenance.cached_file_sha256(f) == first and len(calls) == 1
    f.write_bytes(b"b" * 1000)  # same size, new content and mtime
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert provenance.cached_file_sha256(f) == real(f) != first and len(calls) == 2
    blocker = tmp_path / "not-a-folder"  # a cache that cannot be written (even by root) still gives the digest
    blocker.write_text("x")
    monkeypatch.setenv("DLM_CACHE_DIR", str(blocker))
    f.write_bytes(b"c" * 10)
    assert provenance.cached_file_sha256(f) == real(f) and len(calls) == 3


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_adapter_on_adapter_chain_keeps_the_base_chat_template(tmp_path, data_dir, bases):
    """The smol chain on tiny models: an a2d pretraining adapter on an instruct base with its own chat
    template, then diffusion SFT with a LoRA on that adapter. Pretraining keeps the base's template,
    SFT formats with it (not dlm's), and the second adapter loads through the first."""
    import shutil

    instruct = tmp_path / "instruct"
    shutil.copytree(bases / "ar", instruct)
    (instruct / "chat_template.jinja").write_text(CHATML)
    assert dlm.load(instruct).tokenizer.chat_template == CHATML
    Trainer(_cfg(tmp_path, data_dir, bases, "a2d", init=str(instruct), anneal_steps=2)).train()
    a2d = dlm.load(tmp_path / "a2d")
    assert a2d.tokenizer.chat_template == CHATML  # kept from the --init model
    (tmp_path / "a2d" / "chat_template.jinja").unlink()  # as adapters pretrained before this fix shipped
    sft = Trainer(_cfg(tmp_path, data_dir, bases, "sft", family="llama_causal_sft", init=str(tmp_path / "a2d"),
                       objective="mdm"))
    assert sft.tokenizer.chat_template == CHATML  # the base's, found through the adapter chain
    sft.train()
    model = dlm.load(tmp_path / "sft")
    assert model.tokenizer.chat_template == CHATML and model.facts.mask_id == a2d.facts.mask_id
    meta = json.loads((tmp_path / "sft" / "dlm_adapter.json").read_text())
    assert meta["base"] == str(tmp_path / "a2d")
    ids = torch.tensor([model.encode_prompt("hello")])
    assert dlm.generate(model, ids, gen_length=8, steps=4).shape == (1, ids.shape[1] + 8)


def test_sft_without_any_chat_template_and_foreign_vocabulary_is_refused(tmp_path, data_dir, bases):
    from transformers import AutoTokenizer

    from dlm.train.chat import sft_chat_template

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER), local_files_only=True)
    tok.chat_template = None
    template, note = sft_chat_template(tok, None)  # dlm's tokenizer has the role tokens
    assert "<|assistant|>" in template and "dlm's template" in note
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"a": 0, "b": 1, "<unk>": 2}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    foreign = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>")
    with pytest.raises(DLMError, match="lacks"):
        sft_chat_template(foreign, None)
