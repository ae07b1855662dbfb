"""``remdm`` (ReMDM remasking): reference parity, the paper's update rule, batches, options, counters.

tests/fixtures/remdm/ holds outputs and NFE of guanghanwang/ReMDM-LLaDA's ``llada_remdm_sample``
(169c9b9) on tiny random LLaDA checkpoints, and of kuleshov-group/remdm's
``_ddpm_caching_update`` (cap / rescale / conf) on fixed probabilities
(scripts/derive_remdm_fixtures.py; README there).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import dlm
from dlm.errors import DLMError
from dlm.sampling.remdm import ReMDMSampler, paper_psi_update, paper_sigma, paper_update
from dlm.sampling.revision import revision_events

from conftest import make_tiny_llada

HERE = Path(__file__).resolve().parent / "fixtures" / "remdm"
CASES = json.loads((HERE / "cases.json").read_text())
UPDATES = json.loads((HERE / "paper_updates.json").read_text())
_models: dict[str, object] = {}


def fixture_model(name: str):
    if name not in _models:
        _models[name] = dlm.load(HERE / name)
    return _models[name]


def ref_options(case) -> dict:
    return dict(gen_length=case["mask_length"], steps=case["sampling_steps"], block_length=case["block_size"],
                remdm_number=case["remdm_number"])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_matches_reference_llada_remdm_sample(case):
    """torch.manual_seed(s) + the global RNG, eos_policy="stop_after_eos" for the reference's early return."""
    model = fixture_model(case["checkpoint"])
    torch.manual_seed(case["seed"])
    out = dlm.generate(model, torch.tensor(case["prompt"]), sampler="remdm", return_dict=True,
                       eos_policy="stop_after_eos", **ref_options(case))
    got, ref = out.sequences[0].tolist(), case["output"][0]
    run_end = len(case["prompt"][0]) + case["blocks_run"] * case["block_size"]
    assert got[:run_end] == ref[:run_end]  # every block the reference ran
    if not case["early_return"] or case["ends_with_eos"]:
        # dlm ends where the reference returns, filling the blocks the reference left masked with EOS
        assert got == [case["eos_token_id"] if t == case["mask_id"] else t for t in ref]
        assert out.nfe == case["nfe"]
    else:  # EOS inside the answer: the reference returns, dlm's policy (a trailing EOS) goes on
        assert out.nfe > case["nfe"]


@pytest.mark.parametrize("case", [c for c in CASES if not c["early_return"]][:6], ids=lambda c: c["name"])
def test_reference_parity_with_a_seed_and_no_eos_policy(case):
    out = dlm.generate(fixture_model(case["checkpoint"]), torch.tensor(case["prompt"]), sampler="remdm",
                       return_dict=True, seed=case["seed"], **ref_options(case))
    assert out.sequences.tolist() == case["output"] and out.nfe == case["nfe"]


def test_fixture_coverage():
    assert {c["remdm_number"] for c in CASES} >= {1, 2}
    assert {c["mask_length"] // c["block_size"] for c in CASES} >= {1, 2}
    assert any(c["early_return"] and c["ends_with_eos"] for c in CASES)
    assert any(c["early_return"] and not c["ends_with_eos"] for c in CASES)
    assert sum(u["remasked"] for u in UPDATES) > 20 and {u["sampler"] for u in UPDATES} == {
        "remdm-cap", "remdm-rescale", "remdm-conf"}


def _decode_conf(rows):
    return torch.tensor([[-math.inf if v is None else v for v in row] for row in rows], dtype=torch.float64)


@pytest.mark.parametrize("u", UPDATES, ids=lambda u: f"{u['sampler']}_j{u['j']}of{u['N']}")
def test_paper_update_matches_kuleshov_remdm(u):
    """dlm's update rule on the fixed probabilities and noise of the paper code's _ddpm_caching_update."""
    mask = u["mask_index"]
    x = torch.tensor(u["x"])
    z = torch.tensor(u["logits"], dtype=torch.float64)
    z[..., mask] = -torch.inf
    p = torch.softmax(z, dim=-1)
    psi = _decode_conf(u["conf"])
    alpha_t, alpha_s = u["j"] / u["N"], (u["j"] + 1) / u["N"]
    schedule = u["sampler"].removeprefix("remdm-")
    torch.manual_seed(u["seed"])
    noise = torch.rand(*p.shape, dtype=torch.float64)
    sigma = paper_sigma(schedule, u["eta"], alpha_s, alpha_t, psi, x == mask)
    new = paper_update(x, p, sigma, alpha_s, alpha_t, mask, noise)
    assert new.tolist() == u["xs"]
    if schedule == "conf":
        paper_psi_update(psi, x, new, p, mask)
        assert torch.equal(psi, _decode_conf(u["conf_out"]))


# -- dlm-side properties ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return make_tiny_llada()


def _prompts():
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, 60, (1, 6), generator=g), torch.randint(0, 60, (1, 3), generator=g)


PAPER = [("cap", dict(eta=0.4)), ("rescale", dict(eta=0.7)), ("conf", {})]
SETTINGS = [("reference", dict(remdm_number=2)), ("reference", dict(temperature=0.0))] + PAPER


@pytest.mark.parametrize("schedule,extra", SETTINGS, ids=[f"{s}{i}" for i, (s, _) in enumerate(SETTINGS)])
def test_padded_batch_rows_sample_as_alone(model, schedule, extra):
    long, short = _prompts()
    ids = torch.cat([long, torch.cat([torch.full((1, 3), 61), short], dim=1)])  # (2, 6), row 1 left-padded
    am = torch.ones_like(ids)
    am[1, :3] = 0
    opts = dict(gen_length=16, block_length=8, steps=8, schedule=schedule, **extra)
    both = dlm.generate(model, ids, am, sampler="remdm", seed=[3, 4], **opts)
    assert torch.equal(both[0], dlm.generate(model, long, sampler="remdm", seed=[3], **opts)[0])
    alone = dlm.generate(model, ids[1:], am[1:], sampler="remdm", seed=[4], **opts)
    assert torch.equal(both[1], alone[0])
    if extra.get("temperature") == 0.0:
        assert torch.equal(both[1, 3:], dlm.generate(model, short, sampler="remdm", **opts)[0])


def test_reference_history_counters_and_nfe(model):
    long, _ = _prompts()
    out = dlm.generate(model, long, sampler="remdm", gen_length=32, block_length=16, steps=16, remdm_number=2,
                       seed=1, return_dict=True, output_history=True)
    assert out.nfe == 16 + 2 * 8 and out.history.shape == (out.nfe + 1, 1, 38)  # 8 window steps per block
    assert out.stats["remasked"] == [2 * 8 * 2] and out.stats["revised"] == [0]
    assert bool((out.history[:, :, :6] == long).all())  # the prompt never changes
    hist = out.history[:, 0, 6:]
    # block 0: 2 tokens per schedule step; the window opens after 14 = 7/8 * 16 are committed, and each
    # window step ends with the remask of the next one (shown in the history), 8 window steps
    assert (hist[:17, :16] == 63).sum(dim=1).tolist() == [16, 14, 12, 10, 8, 6, 4] + [4] * 8 + [2, 0]
    assert int(((hist[:-1] != 63) & (hist[1:] == 63)).sum()) > 0  # remasks visible in the history
    assert not bool((out.generated == 63).any())
    assert all(e.position < 32 for e in revision_events(out.history, 6, 63))
    # previous blocks are never remasked: block 0 is frozen during block 1's steps
    assert bool((out.history[16:, 0, 6:22] == out.history[-1, 0, 6:22]).all())


def test_more_tokens_per_step_and_custom_window(model):
    long, _ = _prompts()
    out = dlm.generate(model, long, sampler="remdm", gen_length=32, steps=8, remdm_steps=3, remdm_number=4,
                       seed=2, return_dict=True, output_history=True)
    assert out.nfe == 8 + 3 and out.stats["remasked"] == [12]
    # the window opens once 28 = 7/8 * 32 tokens are committed (7 schedule steps of 4)
    masks = (out.history[:, 0, 6:] == 63).sum(dim=1).tolist()
    assert masks[:8] == [32, 28, 24, 20, 16, 12, 8, 8] and masks[-1] == 0
    none = dlm.generate(model, long, sampler="remdm", gen_length=32, steps=8, remdm_steps=0, return_dict=True,
                        temperature=0.0)
    llada = dlm.generate(model, long, sampler="llada", gen_length=32, steps=8, return_dict=True)
    assert none.nfe == 8 and torch.equal(none.sequences, llada.sequences)


@pytest.mark.parametrize("schedule,extra", PAPER, ids=[s for s, _ in PAPER])
def test_paper_schedules_nfe_prompt_and_completion(model, schedule, extra):
    long, _ = _prompts()
    out = dlm.generate(model, long, sampler="remdm", gen_length=32, block_length=16, steps=16, schedule=schedule,
                       seed=0, return_dict=True, output_history=True, output_token_probs=True, **extra)
    assert out.nfe == 16 and out.history.shape[0] == 17
    assert bool((out.history[:, :, :6] == long).all()) and not bool((out.generated == 63).any())
    assert out.stats["remasked"][0] > 0 and bool(torch.isfinite(out.token_probs).all())
    assert bool((out.history[9:, 0, 6:22] == out.history[-1, 0, 6:22]).all())  # block 0 frozen


@pytest.mark.parametrize("schedule,eta", [("rescale", 0.9), ("cap", 0.3), ("conf", None)])
def test_paper_remask_rate(model, schedule, eta):
    """Remasks per step match sigma (per visible token; conf: sigma_max in all) in expectation."""
    long, _ = _prompts()
    N, observed, expected, var = 8, 0, 0.0, 0.0
    for seed in range(12):
        out = dlm.generate(model, long, sampler="remdm", gen_length=48, steps=N, schedule=schedule, seed=seed,
                           output_history=True, return_dict=True, **({} if eta is None else {"eta": eta}))
        h = out.history[:, 0, 6:]
        for j in range(N):
            visible = int((h[j] != 63).sum())
            observed += int(((h[j] != 63) & (h[j + 1] == 63)).sum())
            a_t, a_s = j / N, (j + 1) / N
            smax = min(1.0, (1 - a_s) / a_t) if a_t > 0 else 1.0
            if schedule == "conf":
                q = smax if visible else 0.0  # softmax weights over the visible tokens sum to 1
                expected, var = expected + q, var + q
            else:
                s = eta * smax if schedule == "rescale" else (min(eta, (1 - a_s) / a_t) if a_t > 0 else eta)
                expected, var = expected + visible * s, var + visible * s * (1 - s)
    assert expected > 20
    assert abs(observed - expected) < 4 * math.sqrt(var) + 1


def test_shifted_model():
    m = dlm.load("tiny-a2d-instruct")
    ids = torch.tensor([[m.facts.bos_id if m.facts.bos_id is not None else 1, 5, 6]])
    for schedule, extra in (("reference", {}), ("rescale", dict(eta=0.5))):
        out = dlm.generate(m, ids, sampler="remdm", gen_length=16, steps=16, block_length=16, schedule=schedule,
                           seed=0, return_dict=True, **extra)
        assert not bool((out.generated == m.facts.mask_id).any()) and out.nfe == (32 if schedule == "reference" else 16)


@pytest.mark.parametrize("opts,msg", [
    (dict(remdm_number=29), "more than the 28 tokens"),
    (dict(block_length=1, steps=32), "remdm_number"),
    (dict(remdm_number=0), "remdm_number must be >= 1"),
    (dict(remdm_steps=-1), "remdm_steps must be >= 0"),
    (dict(eta=0.5), "eta belongs to"),
    (dict(schedule="cap"), "needs eta"),
    (dict(schedule="rescale", eta=1.5), "needs eta"),
    (dict(schedule="conf", eta=0.1), "has no eta"),
    (dict(schedule="cap", eta=0.1, remdm_number=2), "belongs to schedule 'reference'"),
    (dict(schedule="nope"), "schedule must be"),
    (dict(temperature=-1.0), "temperature"),
    (dict(block_length=16, steps=5), "multiple"),
    (dict(eos_policy="never"), "eos_policy"),
])
def test_option_errors(model, opts, msg):
    with pytest.raises(DLMError, match=msg):
        dlm.generate(model, torch.tensor([[1, 2]]), sampler="remdm", **{"gen_length": 32, **opts})


def test_options_for_nfe():
    assert ReMDMSampler.options_for_nfe(64, {}) == {"steps": 32}
    assert ReMDMSampler.options_for_nfe(64, {"schedule": "cap"}) == {"steps": 64}
    with pytest.raises(DLMError):
        ReMDMSampler.options_for_nfe(63, {})


@pytest.mark.parametrize("policy", ["stop_after_eos", "grow"])
def test_eos_policy_padded_rows_equal_alone(policy):
    from dlm.sampling.batching import left_pad

    m = dlm.load("tiny-a2d-instruct")
    ids, mask = left_pad(m, [m.encode_prompt(t) for t in ("What does ls do?", "Hi")])
    kw = dict(sampler="remdm", gen_length=32, block_length=8, steps=16, eos_policy=policy, return_dict=True)
    both = dlm.generate(m, ids, mask, seed=[1, 2], **kw)
    for row, s in enumerate((1, 2)):
        alone = dlm.generate(m, ids[row:row + 1], mask[row:row + 1], seed=[s], **kw)
        assert torch.equal(both.sequences[row], alone.sequences[0])
        assert both.stats["forwards"][row] == alone.nfe
