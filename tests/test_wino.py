"""``wino`` (WINO, wide-in narrow-out): reference parity, the shadow block, padded batches, seeds, options.

tests/fixtures/wino/ holds outputs and NFE of Feng-Hong/WINO-DLLM's ``decoding_wino`` (commit
9549a1d) on tiny random LLaDA checkpoints (scripts/derive_wino_fixtures.py; README there). The
checkpoints are rebuilt here from the recorded make_checkpoint kwargs (and their state hash checked).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

import dlm
from dlm.errors import DLMError
from dlm.sampling.base import Block, DenoiseState
from dlm.sampling.batching import left_pad
from dlm.sampling.revision import revision_events
from dlm.sampling.wino import WinoOptions, WinoSampler

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HERE = FIXTURES / "wino"
CASES = json.loads((HERE / "cases.json").read_text())
MANIFEST = json.loads((HERE / "manifest.json").read_text())
MASK, VOCAB = 250, 256


@pytest.fixture(scope="module")
def fixture_models(tmp_path_factory):
    sys.path.insert(0, str(FIXTURES / "llada"))
    import make_checkpoint as mc

    models = {}
    for name, meta in MANIFEST["checkpoints"].items():
        kw, scale = dict(meta["make_llada_checkpoint_kwargs"]), meta["head_scale"]
        kw["head_row_scale"] = {MASK: 0.0} if scale == 1.0 else {**{i: scale for i in range(VOCAB)}, MASK: 0.0}
        over = {k: v for k, v in kw.items() if k not in ("seed", "shards", "head_row_scale")}
        state = mc.make_state_dict(mc.build_config(**over), kw["seed"], kw["head_row_scale"])
        assert mc.state_dict_sha256(state) == meta["state_sha256"], name
        d = tmp_path_factory.mktemp(name)
        mc.make_llada_checkpoint(d, **kw)
        models[name] = dlm.load(d)
    return models


def case_options(case) -> dict:
    return {k: case[k] for k in ("gen_length", "block_length", "temperature", "threshold", "threshold_back")}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_matches_wino_reference(case, fixture_models):
    torch.manual_seed(case["seed"])  # the reference ran on the global RNG, seeded just before
    out = dlm.generate(fixture_models[case["checkpoint"]], torch.tensor(case["prompt"]), sampler="wino",
                       return_dict=True, **case_options(case))
    assert out.sequences.tolist() == case["output"]
    assert out.nfe == case["nfe"]
    assert out.stats["remasked"] == [case["remasks"]] and out.stats["revised"] == [0]


def test_fixture_exercises_remasking_blocks_and_sampling():
    assert len(CASES) >= 12
    assert sum(c["remasks"] > 0 for c in CASES) >= 10
    assert any(c["gen_length"] > c["block_length"] and c["remasks"] for c in CASES)
    assert any(c["temperature"] > 0 and c["remasks"] for c in CASES)
    assert any(c["threshold"] != 0.6 or c["threshold_back"] != 0.9 for c in CASES)
    assert all(c["masks_left"] == 0 for c in CASES)


@pytest.fixture(scope="module")
def a2d():
    return dlm.load("tiny-a2d-instruct")


def test_position_ids_default_is_bit_identical(fixture_models, a2d):
    x = torch.randint(5, 200, (2, 20), generator=torch.Generator().manual_seed(0))
    pad = torch.ones_like(x)
    pad[1, :4] = 0
    for model in (fixture_models["medium"], a2d):
        for am in (None, pad):
            base = model(x, attention_mask=am, logits_from=3).logits
            pos = model.default_positions(am, 2, 20, x.device)
            assert torch.equal(model(x, attention_mask=am, position_ids=pos, logits_from=3).logits, base)


def test_llada_position_ids_move_rope(fixture_models):
    """Shifting every position id by the same amount leaves RoPE attention (relative) unchanged."""
    model = fixture_models["medium"]
    x = torch.randint(5, 200, (1, 12), generator=torch.Generator().manual_seed(1))
    base = model(x).logits
    moved = model(x, position_ids=torch.arange(7, 19)[None]).logits
    assert torch.allclose(moved, base, atol=1e-4) and not torch.equal(moved, base)


def test_shifted_shadow_slot_is_the_hidden_state_without_its_token(a2d):
    """One layer: shadow slot k equals the plain pass in which query s+k-1 cannot see token s+k."""
    model = copy.deepcopy(a2d)
    model.net.model.layers = model.net.model.layers[:1]
    model.net.config.num_hidden_layers = 1
    x = torch.randint(5, 200, (1, 14), generator=torch.Generator().manual_seed(2))
    x[0, 10:12] = model.facts.mask_id
    state = DenoiseState(model, x.clone(), None, 6, model.facts.mask_id)
    smp = WinoSampler(WinoOptions(gen_length=8, block_length=8))
    block = Block(0, 6, 14)
    logits = smp.forward(state, block)
    shadow = logits[:, smp._shadow_at:smp._shadow_at + 8]
    for k in range(8):
        bias = torch.zeros(1, 1, 14, 14)
        bias[0, 0, 6 + k - 1, 6 + k] = torch.finfo(torch.float32).min
        plain = model(x, attention_bias=bias).logits[0, 6 + k]
        assert torch.allclose(shadow[0, k], plain, atol=1e-4), k
    assert state.nfe == 1


@pytest.mark.parametrize("which", ["sharp", "a2d"])
def test_padded_batch_rows_equal_their_batch_one_runs(which, fixture_models, a2d):
    model = a2d if which == "a2d" else fixture_models["sharp"]
    if which == "a2d":
        prompts = [model.encode_prompt(t) for t in ("Summarise: apt installs packages.", "Hi")]
    else:
        prompts = [[5, 17, 90, 33, 8, 41, 2], [77, 3], [120, 9, 64, 11]]
    opts = dict(gen_length=32, block_length=16)
    ids, mask = left_pad(model, prompts)
    batch = dlm.generate(model, ids, mask, sampler="wino", return_dict=True, **opts)
    for row, prompt in enumerate(prompts):
        alone = dlm.generate(model, torch.tensor([prompt]), sampler="wino", return_dict=True, **opts)
        assert batch.sequences[row, -32:].tolist() == alone.sequences[0, -32:].tolist(), f"row {row}"
        assert batch.stats["remasked"][row] == alone.stats["remasked"][0]
    assert not bool((batch.sequences[:, -32:] == model.facts.mask_id).any())


def test_per_row_seeds_match_runs_alone(fixture_models):
    model = fixture_models["sharp"]
    prompts = [[5, 17, 90, 33, 8, 41, 2], [77, 3]]
    ids, mask = left_pad(model, prompts)
    opts = dict(gen_length=32, block_length=16, temperature=1.0)
    batch = dlm.generate(model, ids, mask, sampler="wino", seed=[11, 12], **opts)
    for row, (prompt, seed) in enumerate(zip(prompts, [11, 12])):
        alone = dlm.generate(model, torch.tensor([prompt]), sampler="wino", seed=[seed], **opts)
        assert batch[row, -32:].tolist() == alone[0, -32:].tolist()
    again = dlm.generate(model, ids, mask, sampler="wino", seed=[11, 12], **opts)
    assert torch.equal(batch, again)


def test_history_nfe_and_revision_counters(fixture_models):
    case = next(c for c in CASES if c["name"] == "gen32_blk8_sharp")
    out = dlm.generate(fixture_models["sharp"], torch.tensor(case["prompt"]), sampler="wino", return_dict=True,
                       output_history=True, **case_options(case))
    assert out.history.shape[0] == out.nfe + 1 == case["nfe"] + 1
    hist, P = out.history, len(case["prompt"][0])
    remasks = int(((hist[:-1] != MASK) & (hist[1:] == MASK)).sum())
    assert remasks == out.stats["remasked"][0] == case["remasks"] > 0
    accepted = ((hist[:-1] == MASK) & (hist[1:] != MASK)).sum(dim=(1, 2)).tolist()
    assert accepted == case["accepted_per_pass"]
    assert isinstance(revision_events(hist, P, MASK), list)
    assert WinoSampler.revises


def test_shifted_model_decodes_with_eos_policy(a2d):
    ids = torch.tensor([a2d.encode_prompt("How do I list files?")])
    for policy in ("none", "stop_after_eos", "grow"):
        out = dlm.generate(a2d, ids, sampler="wino", return_dict=True, gen_length=32, block_length=8,
                           eos_policy=policy, threshold=0.3, threshold_back=0.95)
        assert not bool((out.generated == a2d.facts.mask_id).any())
        assert out.nfe >= 1 and len(out.stats["remasked"]) == 1


@pytest.mark.parametrize("bad, match", [
    (dict(threshold=1.5), "threshold must be in"),
    (dict(threshold_back=-0.1), "threshold_back must be in"),
    (dict(gen_length=30, block_length=8), "multiple of block_length"),
    (dict(gen_length=0), "gen_length must be"),
    (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(temperature=1e-9), "temperature must be 0 or between"),
    (dict(eos_policy="later"), "eos_policy must be one of"),
    (dict(steps=8), "has no option 'steps'"),
    (dict(threshold="high"), "option 'threshold' must be"),
])
def test_options_are_validated(bad, match, fixture_models):
    opts = dict(gen_length=16, block_length=8)
    opts.update(bad)
    with pytest.raises(DLMError, match=match):
        dlm.generate(fixture_models["plain"], torch.tensor([[5, 6, 7]]), sampler="wino", **opts)
