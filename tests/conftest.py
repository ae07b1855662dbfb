"""Shared fixtures: tiny checkpoints built on the fly (seeded), never downloaded."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import dlm
from dlm.models.default import byte_tokenizer, tiny_llada_config
from dlm.models.diffusion_lm import DiffusionLM
from dlm.models.llada import LLaDAConfig, LLaDAModelLM
from dlm.models.registry import resolve_facts
from dlm.train.build import ModelSize
from dlm.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TOKENIZER = ROOT / "data" / "tokenizer"
TINY = ModelSize(d_model=32, n_layers=2, n_heads=2, mlp_hidden=64, max_positions=256)
sys.path.insert(0, str(ROOT / "benchmarks"))

torch.set_num_threads(1)  # tiny models: threads only add contention


def make_tiny_llada(seed: int = 0, tokenizer: bool = False, std: float = 0.3, **overrides) -> DiffusionLM:
    """A random tiny LLaDA (vocab 64 without tokenizer, byte-level with one). std 0.3 so confidences vary."""
    tok = byte_tokenizer() if tokenizer else None
    if tok is not None:
        ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|mask|>", "<|eos|>", "<|pad|>", "<|bos|>", "<|eot|>")}
        cfg = tiny_llada_config(len(tok), mask_token_id=ids["<|mask|>"], eos_token_id=ids["<|eos|>"],
                                pad_token_id=ids["<|pad|>"], bos_token_id=ids["<|bos|>"],
                                eot_token_id=ids["<|eot|>"], **overrides)
    else:
        cfg = tiny_llada_config(64, mask_token_id=63, eos_token_id=62, pad_token_id=61, **overrides)
    net = LLaDAModelLM(LLaDAConfig.from_dict(cfg))
    net.init_weights(std=std, generator=torch.Generator().manual_seed(seed))
    if not net.config.weight_tying:
        with torch.no_grad():  # as in a trained model, the mask token is (almost surely) never the top prediction
            net.model.transformer.ff_out.weight[cfg["mask_token_id"]] = 0.0
    facts = resolve_facts("llada", cfg, net.config.padded_vocab_size, tok)
    return DiffusionLM(net, facts, cfg, tokenizer=tok).eval()


@pytest.fixture(scope="session")
def tiny_llada() -> DiffusionLM:
    return make_tiny_llada()


@pytest.fixture(scope="session")
def tiny_llada_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_llada")
    dlm.save_pretrained(make_tiny_llada(seed=3), out)
    return out


@pytest.fixture(scope="session")
def tiny_llada_tok_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_llada_tok")
    dlm.save_pretrained(make_tiny_llada(seed=4, tokenizer=True), out)
    return out


def debian_subset(out: Path, n_train: int, n_val: int) -> Path:
    """A small dataset folder (train / validation .jsonl.xz) cut from the shipped validation split."""
    import json
    import lzma

    from dlm.data.debian import load_split

    rows = load_split(ROOT / "data" / "debian", "validation")
    for name, part in (("train", rows[:n_train]), ("validation", rows[n_train:n_train + n_val])):
        with lzma.open(out / f"{name}.jsonl.xz", "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    return out


@pytest.fixture
def tokenised_cache(tmp_path_factory, monkeypatch):
    """One tokenised-data cache for the test session, never the user's (training test modules use it
    with ``pytestmark = pytest.mark.usefixtures("tokenised_cache")``); returns its folder."""
    path = tmp_path_factory.getbasetemp() / "dlm-cache"
    monkeypatch.setenv("DLM_CACHE_DIR", str(path))
    return path / "tokenized"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """200 train / 40 validation pairs taken from the shipped validation split (modules may override)."""
    return debian_subset(tmp_path_factory.mktemp("data"), 200, 40)


# -- dlm train runs (tests/test_train*.py) ---------------------------------------------------------
def train_config(tmp_path: Path, data_dir: Path, name: str, **kw) -> TrainConfig:
    """A short run in ``tmp_path / name``: 4 steps of 4 x 64 tokens, eval and a checkpoint every 2."""
    base = dict(out=str(tmp_path / name), data=str(data_dir), seq_len=64, batch_size=4, max_steps=4, eval_every=2,
                eval_batches=2, save_every=2, warmup_steps=2, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def tiny_train_config(tmp_path: Path, data_dir: Path, name: str = "run", **kw) -> TrainConfig:
    """:func:`train_config` for a new TINY causal llama with the shipped tokenizer (``kw`` overrides)."""
    base = dict(objective="causal", arch="llama", size=TINY, tokenizer=str(TOKENIZER))
    return train_config(tmp_path, data_dir, name, **{**base, **kw})


def interrupt_training_at(monkeypatch, at_step: int, how: str) -> None:
    """Ctrl-C during step ``at_step`` (0-based): a SIGINT to this process, or a KeyboardInterrupt raised there."""
    import os
    import signal

    from dlm.train.trainer import Trainer

    loss = Trainer._loss

    def hooked(self, batch, step, *args, **kwargs):
        value = loss(self, batch, step, *args, **kwargs)  # the step's noise is drawn: the RNG moved on
        if step == at_step and self.trainable.training:
            if how in ("signal", "sigterm"):
                os.kill(os.getpid(), signal.SIGINT if how == "signal" else signal.SIGTERM)
            else:
                raise KeyboardInterrupt
        return value

    monkeypatch.setattr(Trainer, "_loss", hooked)
