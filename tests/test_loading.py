"""dlm.load: LLaDA and shifted HF checkpoints, sharding, tokenizers, and clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import dlm
from dlm.errors import CheckpointError
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
