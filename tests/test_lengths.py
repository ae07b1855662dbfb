"""Length checks before generation: the declared maximum, memory, and the trained length."""

from __future__ import annotations

import json
import time
import warnings

import pytest
import torch

import dlm
import dlm.models.lengths as lengths
import dlm.resources
from dlm.errors import CheckpointError, DLMError
from dlm.models.default import pretrained_dir
from dlm.models.lengths import LengthWarning, check_length, model_dims
from dlm.models.registry import declared_lengths
from conftest import make_tiny_llada

PROMPT = torch.tensor([[1, 2, 3]])


@pytest.mark.parametrize("name, field", [("tiny-mdm", "max_sequence_length"), ("tiny-ar", "max_position_embeddings")])
def test_shipped_models_declare_their_lengths(name, field):
    model = dlm.load(name)
    log = json.loads((pretrained_dir() / name / "training_log.json").read_text())
    assert model.facts.max_length == 1024 and model.facts.max_length_field == field
    assert model.facts.trained_length == log["config"]["seq_len"] == 256
    assert model_dims(model) == dict(d_model=256, n_heads=4, n_layers=6, vocab=8192, mlp_hidden=768)


def test_declared_lengths_read_the_config_fields():
    assert declared_lengths({"n_positions": 64, "max_position_embeddings": 99}, "gpt2") == (64, "n_positions", None)
    assert declared_lengths({"max_position_embeddings": 512, "dlm_training": {"seq_len": 128}}, "llama") == (
        512, "max_position_embeddings", 128)
    assert declared_lengths({}, "llama") == (None, None, None)
    with pytest.raises(CheckpointError, match="dlm_training: field 'seq_len' = 0 must be a positive integer"):
        declared_lengths({"dlm_training": {"seq_len": 0}}, "llama")
    with pytest.raises(CheckpointError, match="field 'max_position_embeddings' = '1k' must be a positive integer"):
        declared_lengths({"max_position_embeddings": "1k"}, "llama")


def test_past_the_declared_maximum_is_an_error():
    model = make_tiny_llada(max_sequence_length=32)
    with pytest.raises(DLMError, match=r"prompt \(3\) \+ gen_length \(30\) = 33 tokens exceeds this model's 32 "
                                       r"positions \(the maximum config.json declares as max_sequence_length\)"):
        dlm.generate(model, PROMPT, gen_length=30)
    assert dlm.generate(model, PROMPT, gen_length=29, steps=1).shape == (1, 32)


def test_huge_length_fails_on_memory_before_allocating(monkeypatch):
    model = make_tiny_llada(max_sequence_length=10**9)
    monkeypatch.setattr(dlm.resources, "available_bytes", lambda device: 2**30)  # 1 GiB free
    start = time.perf_counter()
    with pytest.raises(DLMError, match=r"forward pass over 1 x 100003 tokens .* needs about .* but only 1 GiB "
                                       r"is free on cpu; use a shorter length"):
        dlm.generate(model, PROMPT, gen_length=100_000)
    assert time.perf_counter() - start < 5


def test_huge_length_fails_against_the_real_free_memory():
    if dlm.resources.available_bytes("cpu") is None:
        pytest.skip("free memory cannot be told here")
    model = make_tiny_llada(max_sequence_length=10**9)
    with pytest.raises(DLMError, match="needs about .* TiB of memory"):  # (1, 4, L, L) scores alone: 32 TiB
        dlm.generate(model, PROMPT, gen_length=1_000_000)


def test_guidance_counts_the_unconditional_copy(monkeypatch):
    model = make_tiny_llada()
    calls = []
    real = lengths.forward_bytes
    monkeypatch.setattr(lengths, "forward_bytes", lambda batch, *a, **k: calls.append(batch) or real(batch, *a, **k))
    dlm.generate(model, PROMPT, gen_length=4, steps=1)
    dlm.generate(model, PROMPT, gen_length=4, steps=1, cfg_scale=1.0)
    assert calls == [1, 2]


def test_past_the_trained_length_warns():
    model = make_tiny_llada(dlm_training={"seq_len": 8})
    with pytest.warns(LengthWarning, match=r"prompt \(3\) \+ gen_length \(8\) = 11 tokens is longer than the 8 "
                                           r"tokens this model was trained on \(config.json dlm_training.seq_len\)"):
        dlm.generate(model, PROMPT, gen_length=8, steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dlm.generate(model, PROMPT, gen_length=5, steps=1)  # 8 tokens: as trained, no warning


def test_check_length_alone_for_other_entry_points():
    model = make_tiny_llada(max_sequence_length=16, dlm_training={"seq_len": 8})
    check_length(model, 4, 8, "sequence")
    with pytest.warns(LengthWarning, match="sequence = 12 tokens"):
        check_length(model, 4, 12, "sequence")
    with pytest.raises(DLMError, match="sequence = 17 tokens exceeds"):
        check_length(model, 4, 17, "sequence")
