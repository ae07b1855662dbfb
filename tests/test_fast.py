"""``fast`` (Fast-dLLM): reference parity, equality with ``llada``, K/V caches, padded batches, options.

tests/fixtures/fast/ holds outputs and NFE of NVlabs/Fast-dLLM's ``generate``,
``generate_with_prefix_cache`` and ``generate_with_dual_cache`` (upstream a9b81e4) on tiny random
LLaDA checkpoints (scripts/derive_fast_fixtures.py; README there).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import dlm
from dlm.errors import DLMError
from dlm.sampling.batching import left_pad
from dlm.sampling.fast import factor_count

HERE = Path(__file__).resolve().parent / "fixtures" / "fast"
CASES = json.loads((HERE / "cases.json").read_text())


def completes(case) -> bool:
    """The reference ran every block to completion (its dual loop can stop a block early, see fast.py)."""
    return case["masks_left"] == 0 and not case["stats"].get("earlier_block_fills")


def options(case) -> dict:
    opts = dict(gen_length=case["gen_length"], block_length=case["block_length"], temperature=case["temperature"],
                remasking=case["remasking"], cache=case["cache"])
    if case["threshold"] is not None:
        opts["threshold"] = case["threshold"]
    if case["factor"] is not None:
        opts["factor"] = case["factor"]
    if case["threshold"] is None and case["factor"] is None:
        opts["steps"] = case["steps"]
    return opts


_models: dict[str, object] = {}


def fixture_model(name: str):
    if name not in _models:
        _models[name] = dlm.load(HERE / name)
    return _models[name]


@pytest.mark.parametrize("case", [c for c in CASES if completes(c)], ids=lambda c: c["name"])
def test_matches_fast_dllm_reference(case):
    model = fixture_model(case["checkpoint"])
    torch.manual_seed(case["seed"])  # as the reference was called: the global RNG, seeded just before
    out = dlm.generate(model, torch.tensor(case["prompt"]), sampler="fast", return_dict=True, **options(case))
    assert out.sequences.tolist() == case["output"]
    assert out.nfe == case["nfe"]


def test_fixture_covers_every_cache_rule_and_temperature():
    kept = [c for c in CASES if completes(c)]
    assert {c["cache"] for c in kept} == {"none", "prefix", "dual"}
    for rule in ("threshold", "factor"):
        assert {c["cache"] for c in kept if c[rule] is not None} == {"none", "prefix", "dual"}
    assert any(c["temperature"] > 0 for c in kept) and any(len(c["prompt"]) > 1 for c in kept)
    assert len(kept) >= 60


@pytest.mark.parametrize("case", [c for c in CASES if not completes(c)], ids=lambda c: c["name"])
def test_blocks_run_to_completion_where_the_reference_stops_early(case):
    """The reference's dual loop leaves masks (or fills them at a later block); dlm completes each block."""
    model = fixture_model(case["checkpoint"])
    torch.manual_seed(case["seed"])
    out = dlm.generate(model, torch.tensor(case["prompt"]), sampler="fast", return_dict=True, **options(case))
    assert not bool((out.generated == model.facts.mask_id).any())
    blocks = case["gen_length"] // case["block_length"]
    assert blocks <= out.nfe <= case["gen_length"]


@pytest.mark.parametrize("name", ["tiny-mdm-instruct", "tiny-a2d-instruct"])
@pytest.mark.parametrize("setting", [dict(gen_length=16, block_length=16, steps=16),
                                     dict(gen_length=16, block_length=8, steps=8),
                                     dict(gen_length=24, block_length=8, steps=12, temperature=0.7)])
def test_no_cache_no_threshold_equals_llada(name, setting):
    model = dlm.load(name)
    ids = torch.tensor([model.encode_prompt("How do I list the files in a directory?")])
    ref = dlm.generate(model, ids, sampler="llada", seed=5, return_dict=True, **setting)
    out = dlm.generate(model, ids, sampler="fast", cache="none", seed=5, return_dict=True, **setting)
    assert torch.equal(out.sequences, ref.sequences)
    assert out.nfe == ref.nfe == setting["steps"]


RULES = [dict(steps=8), dict(threshold=0.5), dict(threshold=0.9), dict(factor=1.0)]


@pytest.mark.parametrize("name", ["tiny-mdm-instruct", "tiny-a2d-instruct"])
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("rule", RULES, ids=lambda r: "-".join(f"{k}{v}" for k, v in r.items()))
def test_padded_batch_rows_equal_their_batch_one_runs(name, cache, rule):
    model = dlm.load(name)
    prompts = [model.encode_prompt(t) for t in ("Summarise: apt installs packages.", "Hi", "What is grep for?")]
    opts = dict(gen_length=16, block_length=8, cache=cache, **rule)
    ids, mask = left_pad(model, prompts)
    assert mask is not None
    batch = dlm.generate(model, ids, mask, sampler="fast", **opts)
    for row, prompt in enumerate(prompts):
        alone = dlm.generate(model, torch.tensor([prompt]), sampler="fast", **opts)
        assert batch[row, -16:].tolist() == alone[0, -16:].tolist(), f"row {row}"
    assert not bool((batch[:, -16:] == model.facts.mask_id).any())


def test_cached_forward_equals_full_forward_on_an_unchanged_canvas():
    """fill / prefix / dual passes see the same keys as a full pass while nothing has changed."""
    for name in ("tiny-mdm", "tiny-a2d"):
        model = dlm.load(name)
        x = torch.randint(5, 200, (2, 24), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(x)
        mask[1, :3] = 0
        for am in (None, mask):
            full = model(x, attention_mask=am).logits[:, 10:16]
            for modes in (("fill", "prefix", "prefix"), ("fill", "dual", "dual")):
                cache = model.new_cache()
                for mode in modes:
                    got = model.cached_forward(x, am, cache, mode, 10, 16)
                    assert torch.allclose(got, full, atol=1e-5), (name, mode)
            with pytest.raises(ValueError, match="run a fill pass first"):
                model.cached_forward(x, am, model.new_cache(), "dual", 10, 16)


def test_dual_cache_writes_the_block_in_place_and_keeps_the_rest():
    model = dlm.load("tiny-mdm")
    x = torch.randint(5, 200, (1, 20), generator=torch.Generator().manual_seed(1))
    cache = model.new_cache()
    model.cached_forward(x, None, cache, "fill", 8, 12)
    before = [k.clone() for k in cache.keys]
    x2 = x.clone()
    x2[:, 8:12] = 7
    model.cached_forward(x2, None, cache, "dual", 8, 12)
    for old, new in zip(before, cache.keys):
        assert torch.equal(old[:, :, :8], new[:, :, :8]) and torch.equal(old[:, :, 12:], new[:, :, 12:])
    assert not torch.equal(before[0][:, :, 8:12], cache.keys[0][:, :, 8:12])


def test_factor_rule_counts_as_the_reference():
    c = torch.tensor([0.99, 0.9, 0.2, 0.1], dtype=torch.float64)  # needs: -1, 1 - f/3, 1 - f/4, 1 - f/5
    assert factor_count(c, 1.0) == 2  # 0.9 >= 0.667, 0.2 < 0.75: the prefix of two
    assert factor_count(torch.tensor([0.99, 0.9, 0.85, 0.1], dtype=torch.float64), 1.0) == 4  # fails at the last: all
    assert factor_count(torch.tensor([0.5], dtype=torch.float64), 1.0) == 1
    assert factor_count(torch.tensor([0.99, 0.99, 0.99], dtype=torch.float64), 0.5) == 3


@pytest.mark.parametrize("bad, message", [
    (dict(threshold=0.9, factor=1.0), "not both"),
    (dict(threshold=0.9, steps=16), "leave steps out"),
    (dict(threshold=1.5), "threshold must be in"),
    (dict(factor=0.0), "factor must be > 0"),
    (dict(cache="full"), "cache must be one of"),
    (dict(block_length=5), "multiple of block_length"),
    (dict(steps=3, block_length=8), "multiple of the number of blocks"),
    (dict(eos_policy="early"), "eos_policy must be one of"),
    (dict(steps=10**20), "more than 1,000,000"),
])
def test_invalid_options_are_refused(bad, message):
    model = dlm.load("tiny-mdm-instruct")
    opts = dict(gen_length=16, **bad)
    with pytest.raises(DLMError, match=message):
        dlm.generate(model, torch.tensor([[5, 6, 7]]), sampler="fast", **opts)


def test_threshold_needs_fewer_passes_and_reports_history():
    model = dlm.load("tiny-mdm-instruct")
    ids = torch.tensor([model.encode_prompt("What does ls do?")])
    out = dlm.generate(model, ids, sampler="fast", gen_length=32, block_length=8, threshold=0.3, cache="dual",
                       return_dict=True, output_history=True, output_token_probs=True)
    assert out.nfe < 32 and out.history.shape[0] == out.nfe + 1
    assert not bool(torch.isnan(out.token_probs).any())


def test_nfe_budget_for_eval():
    from dlm.sampling import sampler_class

    assert sampler_class("fast").options_for_nfe(16, {}) == {"steps": 16}
    with pytest.raises(DLMError, match="depends on the model's confidence"):
        sampler_class("fast").options_for_nfe(16, {"threshold": 0.9})
