"""dlm.load: LLaDA and shifted HF checkpoints, sharding, tokenizers, and clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import dlm
from dlm.errors import CheckpointError, DLMError
from conftest import make_tiny_llada


def test_roundtrip_single_file(tiny_llada_dir):
    model = dlm.load(tiny_llada_dir)
    ref = make_tiny_llada(seed=3)
    ids = torch.randint(0, 60, (2, 9), generator=torch.Generator().manual_seed(0))
    assert model.tokenizer is None
    assert model.facts.mask_id == 63 and model.facts.eos_ids == (62,) and not model.facts.shifted
    torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=0, atol=0)


def test_parameter_names_match_original_llada(tiny_llada_dir):
    from safetensors import safe_open

    with safe_open(str(tiny_llada_dir / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.transformer.wte.weight" in keys and "model.transformer.ff_out.weight" in keys
    assert "model.transformer.ln_f.weight" in keys
    for part in ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out", "attn_norm", "ff_norm"):
        assert f"model.transformer.blocks.1.{part}.weight" in keys


def test_sharded_roundtrip(tmp_path):
    model = make_tiny_llada(seed=5)
    dlm.save_pretrained(model, tmp_path, max_shard_bytes=40_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    loaded = dlm.load(tmp_path)
    ids = torch.randint(0, 60, (1, 7), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_tokenizer_and_chat_template(tiny_llada_tok_dir):
    model = dlm.load(tiny_llada_tok_dir)
    assert model.tokenizer is not None
    ids = model.encode_prompt("hi")
    text = model.tokenizer.decode(ids)
    assert text.startswith("<|bos|><|user|>\nhi<|eot|><|assistant|>\n")
    plain = model.encode_prompt("hi", chat=False)
    assert model.decode(plain) == "hi"


def test_bfloat16_load(tiny_llada_dir):
    model = dlm.load(tiny_llada_dir, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    ids = torch.randint(0, 60, (2, 5))
    am = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert torch.isfinite(model(ids, attention_mask=am).logits.float()).all()


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda d: (d / "config.json").unlink(), "config.json: missing"),
        (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda d: _edit(d, model_type="bert"), "model_type' = 'bert' is not supported"),
        (lambda d: _edit(d, model_type=None), "'model_type' is missing"),
        (lambda d: _edit(d, d_model=32), "tensor 'model.transformer.wte.weight' has shape"),
        (lambda d: _edit(d, n_layers=3), "tensor 'model.transformer.blocks.2.attn_norm.weight' is missing"),
        (lambda d: _edit(d, block_type="sequential"), "field 'block_type'"),
        (lambda d: _edit(d, activation_type="swiglu"), "field 'activation_type'"),
        (lambda d: _edit(d, d_model=None), "required LLaDA field 'd_model' is missing"),
        (lambda d: (d / "model.safetensors").unlink(), "no weights found"),
        (lambda d: (d / "model.safetensors").write_bytes(b"garbage"), "cannot read weights"),
        (lambda d: _edit(d, n_heads=0), "field 'n_heads' = 0 must be positive"),
        (lambda d: _edit(d, d_model="64"), "field 'd_model' = '64' must be an integer"),
        (lambda d: _edit(d, rope_theta=float("nan")), "field 'rope_theta'"),
        (lambda d: _edit(d, model_type=["llada"]), "is not supported"),
        (lambda d: _shard_index(d, []), "must map tensor names to shard file names"),
        (lambda d: _shard_index(d, {"model.transformer.wte.weight": None}), "must map tensor names"),
        (lambda d: ((d / "model.safetensors").unlink(), (d / "pytorch_model.bin").write_bytes(b"")),
         "cannot read weights (EOFError"),
    ],
)
def test_broken_checkpoints_fail_with_one_clear_sentence(tiny_llada_dir, tmp_path, breakage, message):
    d = _copy(tiny_llada_dir, tmp_path / "ckpt")
    breakage(d)
    with pytest.raises(CheckpointError) as err:
        dlm.load(d)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_shard_is_named(tmp_path):
    dlm.save_pretrained(make_tiny_llada(seed=5), tmp_path, max_shard_bytes=40_000)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        dlm.load(tmp_path)


def test_not_a_directory(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CheckpointError, match="expected a model directory"):
        dlm.load(f)


def _shard_index(d, weight_map):
    (d / "model.safetensors").unlink()
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_remote_code_is_never_run_or_asked_about(tiny_llada_tok_dir, tmp_path):
    """Real LLaDA configs carry an auto_map; loading must not prompt or execute checkpoint code."""
    import subprocess
    import sys

    d = _copy(tiny_llada_tok_dir, tmp_path / "ckpt")
    _edit(d, auto_map={"AutoConfig": "configuration_llada.LLaDAConfig",
                       "AutoModel": "modeling_llada.LLaDAModelLM"})
    (d / "configuration_llada.py").write_text("raise SystemExit('checkpoint code was executed')\n")
    proc = subprocess.run([sys.executable, "-m", "dlm.cli", "generate", "--model", str(d), "--prompt", "hi",
                           "--gen-length", "4", "--json"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"][0]["text"] is not None


def _edit(d, **fields):
    cfg = json.loads((d / "config.json").read_text())
    for k, v in fields.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))


# -- devices ------------------------------------------------------------------------------------
@pytest.mark.parametrize("device, backend", [("mps", "MPS"), ("xpu", "XPU"), ("cuda", "CUDA"), ("cuda:7", "CUDA")])
def test_unavailable_device_is_one_clear_error(device, backend):
    from dlm.models.loading import parse_device

    kind = device.split(":")[0]
    if kind == "mps" and torch.backends.mps.is_available() or kind != "mps" and getattr(torch, kind).is_available():
        pytest.skip(f"{kind} is available here")
    with pytest.raises(DLMError, match=f"device '{device}' was requested but {backend}.* not available"):
        parse_device(device)


def test_device_index_past_the_gpus_is_named(monkeypatch):
    from dlm.models.loading import parse_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DLMError, match=r"'cuda:7' was requested but is not available: .* 1 CUDA device \(cuda:0\)"):
        parse_device("cuda:7")
    assert parse_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(DLMError, match="'meta' is not supported"):
        parse_device("meta")


# -- hub ids and the local Hugging Face cache ----------------------------------------------------
def _fake_hub_cache(root, hub_id, src, rev="0123abcd", with_ref=True):
    repo = root / ("models--" + hub_id.replace("/", "--"))
    snap = _copy(src, repo / "snapshots" / rev)
    if with_ref:
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(rev)
    return snap


def test_hub_id_loads_from_the_local_hf_cache(tiny_llada_tok_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    _fake_hub_cache(tmp_path / "hub", "someone/other-model", tiny_llada_tok_dir, rev="ffff")  # not picked
    snap = _fake_hub_cache(tmp_path / "hub", "GSAI-ML/LLaDA-tiny", tiny_llada_tok_dir)
    model = dlm.load("GSAI-ML/LLaDA-tiny")
    assert model.path == str(snap) and model.tokenizer is not None


def test_hub_cache_from_hf_home_without_refs(tiny_llada_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    snap = _fake_hub_cache(tmp_path / "hf" / "hub", "org/name", tiny_llada_dir, with_ref=False)
    assert dlm.load("org/name").path == str(snap)


def test_hub_id_not_cached_says_dlm_never_downloads(tiny_llada_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(CheckpointError) as err:
        dlm.load("GSAI-ML/LLaDA-8B-Instruct")
    msg = str(err.value)
    assert "GSAI-ML/LLaDA-8B-Instruct" in msg and "never downloads" in msg and "\n" not in msg
    assert "download GSAI-ML/LLaDA-8B-Instruct --local-dir DIR" in msg and str(tmp_path / "hub") in msg
    snap = _fake_hub_cache(tmp_path / "hub", "GSAI-ML/LLaDA-8B-Instruct", tiny_llada_dir)
    (snap / "model.safetensors").unlink()  # an interrupted download
    with pytest.raises(CheckpointError, match="has no complete snapshot.*never downloads"):
        dlm.load("GSAI-ML/LLaDA-8B-Instruct")


def test_plain_missing_path_still_names_the_directory(tmp_path):
    with pytest.raises(CheckpointError, match="model directory does not exist"):
        dlm.load(tmp_path / "nope")


# -- special token ids ---------------------------------------------------------------------------
@pytest.mark.parametrize("fields, message", [
    (dict(mask_token_id=99999), "field 'mask_token_id' 99999 is outside the model's vocabulary [0, 64)"),
    (dict(eos_token_id=64), "field 'eos_token_id' 64 is outside"),
    (dict(pad_token_id=70), "field 'pad_token_id' 70 is outside"),
    (dict(bos_token_id="0"), "field 'bos_token_id' = '0' must be an integer token id"),
    (dict(eot_token_id=1000), "field 'eot_token_id' 1000 is outside"),
])
def test_declared_ids_outside_the_vocabulary_are_errors(tiny_llada_dir, tmp_path, fields, message):
    d = _copy(tiny_llada_dir, tmp_path / "ckpt")
    _edit(d, **fields)
    with pytest.raises(CheckpointError) as err:
        dlm.load(d)
    assert str(err.value).startswith(str(d / "config.json")) and message in str(err.value)


def test_pad_token_id_minus_one_means_no_padding_token(tiny_llada_dir, tmp_path):
    """Older LLaMA exports write pad_token_id -1 for "none": no pad id, not an error."""
    d = _copy(tiny_llada_dir, tmp_path / "ckpt")
    _edit(d, pad_token_id=-1)
    assert dlm.load(d).facts.pad_id is None


def test_tokenizer_ids_outside_the_vocabulary_are_errors():
    from types import SimpleNamespace

    from dlm.models.registry import resolve_facts

    tok = SimpleNamespace(mask_token_id=99999, eos_token_id=1, bos_token_id=None, pad_token_id=None,
                          get_vocab=lambda: {})
    with pytest.raises(CheckpointError, match="tokenizer: mask_token_id 99999 is outside"):
        resolve_facts("llama", {}, 64, tok)
    with pytest.raises(CheckpointError, match=r"config.json: field 'eos_token_id' 64 is outside the model's vocabulary "
                                              r"\[0, 64\)"):
        resolve_facts("llama", {"eos_token_id": [2, 64], "mask_token_id": 3}, 64, tok)
    assert resolve_facts("llama", {"mask_token_id": 3}, 64, tok).mask_id == 3  # config.json wins


def test_family_defaults_outside_a_tiny_vocabulary_are_dropped():
    from dlm.models.registry import resolve_facts

    facts = resolve_facts("llada", {"mask_token_id": 63}, 64)  # LLaDA's defaults: eos 126081, bos 126080...
    assert facts.mask_id == 63 and facts.eos_ids == () and facts.bos_id is None and facts.eot_id is None
    assert resolve_facts("llada", {}, 200_000).mask_id == 126336


def test_no_mask_id_anywhere_is_still_the_sampler_error():
    from dlm.models.registry import resolve_facts

    facts = resolve_facts("llama", {"eos_token_id": 2}, 64)
    with pytest.raises(DLMError, match="has no mask token id"):
        facts.resolve_mask_id()
