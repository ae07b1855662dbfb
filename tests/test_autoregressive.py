"""The ``ar`` sampler for causal LMs, sampler choice by model kind and checkpoint generation defaults."""

import dataclasses
from pathlib import Path

import pytest
import torch

import dlm
from dlm.errors import DLMError
from dlm.sampling.batching import left_pad
from dlm.train.build import ModelSize, new_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def causal_lm():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ROOT / "data" / "tokenizer"), local_files_only=True)
    model = new_model("llama", ModelSize(d_model=32, n_layers=2, n_heads=2, mlp_hidden=64), tok, seed=3,
                      objective="causal")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.net.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)  # peaked logits: varied greedy tokens
    return model.eval()


def test_greedy_matches_transformers_generate(causal_lm):
    prompt = torch.tensor([[0, 4, 100, 200, 300, 6, 5]])
    want = causal_lm.net.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=2)
    out = dlm.generate(causal_lm, prompt, sampler="ar", gen_length=12, stop_at_eos=False, return_dict=True)
    assert torch.equal(out.sequences, want)
    assert out.nfe == 12 and len(set(out.generated[0].tolist())) > 1


def test_left_padded_batch_equals_rows_and_history(causal_lm):
    prompts = [[0, 4, 100, 200, 300, 6, 5], [0, 4, 999, 6, 5]]
    ids, mask = left_pad(causal_lm, prompts)
    out = dlm.generate(causal_lm, ids, mask, gen_length=8, stop_at_eos=False, return_dict=True, output_history=True)
    assert out.sampler == "ar"  # picked for a causal LM
    for row, p in enumerate(prompts):
        alone = dlm.generate(causal_lm, torch.tensor([p]), gen_length=8, stop_at_eos=False)
        assert torch.equal(out.generated[row], alone[0, len(p):])
    assert out.history.shape == (9, 2, ids.shape[1] + 8)
    assert int((out.history[1][:, -8:] == 3).sum()) == 2 * 7  # one token per step, mask id elsewhere


def test_stop_at_eos_fills_with_eos_and_ends_early(causal_lm):
    prompt = torch.tensor([[0, 4, 100, 6, 5], [0, 4, 200, 6, 5]])
    bias = torch.zeros(8192)
    bias[1] = 1e4  # EOS (id 1) is every row's first token
    hook = causal_lm.net.lm_head.register_forward_hook(lambda mod, inp, out: out + bias)
    try:
        out = dlm.generate(causal_lm, prompt, gen_length=16, return_dict=True)
        free = dlm.generate(causal_lm, prompt, gen_length=4, stop_at_eos=False, return_dict=True)
    finally:
        hook.remove()
    assert out.nfe == 1 and bool((out.generated == 1).all())  # stopped after one pass, rest filled with EOS
    assert free.nfe == 4


def test_sampler_and_model_kind_must_agree(causal_lm, tiny_llada):
    x = torch.tensor([[0, 4, 5]])
    with pytest.raises(DLMError, match="causal.*sampler='ar'"):
        dlm.generate(causal_lm, x, sampler="llada")
    with pytest.raises(DLMError, match="causal LMs only"):
        dlm.generate(tiny_llada, torch.tensor([[1, 2]]), sampler="ar")
    with pytest.raises(DLMError, match="has no option 'steps'"):
        dlm.generate(causal_lm, x, steps=4)


def test_checkpoint_generation_defaults_apply_and_yield_to_options(tiny_llada):
    tiny_llada.config["dlm_generation"] = {"gen_length": 8, "stop_at_eos": True}  # ar's option: skipped
    try:
        out = dlm.generate(tiny_llada, torch.tensor([[1, 2]]), return_dict=True)
        assert out.options["gen_length"] == 8 and out.options["steps"] == 8
        out = dlm.generate(tiny_llada, torch.tensor([[1, 2]]), return_dict=True, gen_length=4)
        assert out.options["gen_length"] == 4
    finally:
        del tiny_llada.config["dlm_generation"]


def test_generation_emits_no_deprecation_warnings(causal_lm):
    """The KV cache goes through transformers' current API: no FutureWarning, no logger warning."""
    import logging
    import warnings

    import transformers

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers")  # transformers' root logger does not propagate
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    logging.Logger.warning_once.cache_clear()  # warning_once is cached per process
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ids, mask = left_pad(causal_lm, [[0, 4, 100, 200], [0, 4, 999]])
            dlm.generate(causal_lm, ids, mask, gen_length=4, stop_at_eos=False, temperature=1.0, seed=0)
    finally:
        logger.removeHandler(handler)
        transformers.logging.set_verbosity(verbosity)
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []


def test_rows_report_the_passes_they_needed(causal_lm):
    """stats["forwards"]: a row that stops early rode along in later passes but needed only its own."""
    prompt = torch.tensor([[0, 4, 100, 6, 5], [0, 4, 200, 6, 5]])
    free = dlm.generate(causal_lm, prompt, gen_length=6, stop_at_eos=False, return_dict=True)
    stop = int(free.generated[0, 2])  # row 0's third token becomes a stop token; row 1 must not emit it
    assert stop not in free.generated[1].tolist()
    facts = causal_lm.facts
    causal_lm.facts = dataclasses.replace(facts, eos_ids=(*facts.eos_ids, stop))
    try:
        out = dlm.generate(causal_lm, prompt, gen_length=6, return_dict=True)
    finally:
        causal_lm.facts = facts
    assert out.nfe == 6 and out.stats["forwards"] == [3, 6]
    assert torch.equal(out.generated[1], free.generated[1])
