"""``edit`` (LLaDA2.1 joint-threshold decoding with token editing): reference parity, batches, options.

tests/fixtures/edit holds outputs of SGLang's ``JointThreshold`` (sgl-project/sglang 17d5721), driven
block by block as its ``_run_sync`` does, on the tiny ``medium`` / ``sharp`` LLaDA checkpoints of
tests/fixtures/fast (scripts/derive_edit_fixtures.py; README there).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import dlm
from dlm.errors import DLMError
from dlm.sampling import sampler_class
from dlm.sampling.batching import left_pad
from dlm.sampling.revision import revision_events

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HERE = FIXTURES / "edit"
CASES = json.loads((HERE / "cases.json").read_text())
MANIFEST = json.loads((HERE / "manifest.json").read_text())

_models: dict[str, object] = {}


def fixture_model(name: str):
    if name not in _models:
        _models[name] = dlm.load(FIXTURES / "fast" / name)
    return _models[name]


def run_case(case, **extra):
    return dlm.generate(fixture_model(case["checkpoint"]), torch.tensor(case["prompt"]), sampler="edit",
                        gen_length=case["gen_length"], block_length=case["block_length"], return_dict=True,
                        **case["algorithm_config"], **extra)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_matches_sglang_joint_threshold(case):
    out = run_case(case)
    assert out.sequences.tolist() == case["output"]
    # the reference runs one more pass per block (its K/V write); dlm counts the passes a step reads
    assert out.nfe == case["nfe"] == case["reference_forwards"] - len(case["blocks"])
    assert out.stats["forwards"] == case["row_forwards"]
    assert sum(out.stats["revised"]) == case["t2t_edits"] and out.stats["remasked"] == [0] * len(case["prompt"])


def test_fixture_checkpoints_and_coverage():
    for name, info in MANIFEST["checkpoints"].items():
        for fn in ("model.safetensors", "config.json"):
            digest = hashlib.sha256((FIXTURES / "fast" / name / fn).read_bytes()).hexdigest()
            assert digest == info[f"{fn}_sha256"], f"tests/fixtures/fast/{name}/{fn} changed; rederive"
    assert len(MANIFEST["reference"]["commit"]) == 40
    configs = [c["algorithm_config"] for c in CASES]
    assert {c.get("threshold") for c in configs} >= {0.5, 0.9, 1.0}
    assert {c.get("edit_threshold") for c in configs} >= {0.0, 0.5, 0.9, 1.0}
    assert {c.get("max_post_edit_steps") for c in configs} >= {0, 4, 16}
    assert any(c.get("penalty_lambda", 0) > 0 for c in configs)
    assert {(c["gen_length"], c["block_length"]) for c in CASES} >= {(32, 32), (64, 32), (32, 8)}
    assert sum(c["t2t_edits"] > 0 for c in CASES) >= 20 and any(len(c["prompt"]) == 3 for c in CASES)
    budget = [pe > c["algorithm_config"].get("max_post_edit_steps", 16) for c in CASES for b in c["blocks"]
              for pe in b["post_edit_steps"]]
    assert any(budget) and not all(budget)  # rows finish by the post-edit budget and by no change
    assert any(len(set(c["row_forwards"])) > 1 for c in CASES)  # batch rows finish at different steps


def test_history_shows_the_revisions():
    case = next(c for c in CASES if c["name"].startswith("sharp_p6x2_gen64_blk32_thr0.5_ethr0_post4"))
    out = run_case(case, output_history=True, output_token_probs=True)
    assert out.history.shape == (out.nfe + 1, 2, len(case["output"][0]))
    events = revision_events(out.history, out.prompt_length, 250)
    assert len(events) == sum(out.stats["revised"]) == case["t2t_edits"] > 0
    for row in range(2):
        assert sum(e.row == row for e in events) == out.stats["revised"][row]
    assert not bool(torch.isnan(out.token_probs).any())


@pytest.mark.parametrize("name", ["tiny-mdm-instruct", "tiny-a2d-instruct"])
@pytest.mark.parametrize("opts", [dict(threshold=0.5, edit_threshold=0.0, max_post_edit_steps=1),
                                  dict(threshold=0.9, edit_threshold=0.5, penalty_lambda=1.0)])
def test_padded_batch_rows_equal_their_batch_one_runs(name, opts):
    model = dlm.load(name)
    prompts = [model.encode_prompt(t) for t in ("Summarise: apt installs packages.", "Hi", "What is grep for?")]
    opts = dict(gen_length=16, block_length=8, **opts)
    ids, mask = left_pad(model, prompts)
    assert mask is not None
    batch = dlm.generate(model, ids, mask, sampler="edit", return_dict=True, **opts)
    for row, prompt in enumerate(prompts):
        alone = dlm.generate(model, torch.tensor([prompt]), sampler="edit", return_dict=True, **opts)
        assert batch.sequences[row, -16:].tolist() == alone.sequences[0, -16:].tolist(), f"row {row}"
        assert batch.stats["forwards"][row] == alone.nfe
        assert batch.stats["revised"][row] == alone.stats["revised"][0]
    assert batch.nfe == max(batch.stats["forwards"])
    assert sum(batch.stats["revised"]) > 0 or opts["edit_threshold"] > 0  # edit_threshold 0: tokens were edited
    assert not bool((batch.sequences[:, -16:] == model.facts.mask_id).any())
    if "penalty_lambda" in opts:  # greedy: per-row seeds draw nothing and change nothing
        seeded = dlm.generate(model, ids, mask, sampler="edit", seed=[1, 2, 3], **opts)
        assert torch.equal(seeded, batch.sequences)


def test_nfe_accounting_and_no_step_budget():
    model = dlm.load("tiny-mdm-instruct")
    ids = torch.tensor([model.encode_prompt("What does ls do?")])
    for mpes in (0, 2):
        out = dlm.generate(model, ids, sampler="edit", gen_length=16, block_length=8, max_post_edit_steps=mpes,
                           return_dict=True, output_history=True)
        assert out.history.shape[0] == out.nfe + 1 == out.stats["forwards"][0] + 1
        assert 2 <= out.nfe <= 2 * (8 + mpes + 1)
    cls = sampler_class("edit")
    assert not cls.has_step_budget({}) and cls.revises
    with pytest.raises(DLMError, match="no step budget"):
        cls.options_for_nfe(16, {})


def test_eos_policy_stops_ended_rows():
    model = dlm.load("tiny-a2d-instruct")
    opts = dict(gen_length=32, block_length=8)
    prompts = [model.encode_prompt(t) for t in ("Hi", "What is grep for?")]
    full = dlm.generate(model, torch.tensor([prompts[0]]), sampler="edit", return_dict=True, **opts)
    opts["eos_policy"] = "stop_after_eos"
    alone = [dlm.generate(model, torch.tensor([p]), sampler="edit", return_dict=True, **opts) for p in prompts]
    assert alone[0].nfe < full.nfe and alone[0].stats["blocks_run"] < 4
    ids, mask = left_pad(model, prompts)
    batch = dlm.generate(model, ids, mask, sampler="edit", return_dict=True, **opts)
    for row, one in enumerate(alone):  # an ended row changes no more while the other decodes on
        assert batch.sequences[row, -32:].tolist() == one.sequences[0, -32:].tolist()
        assert batch.stats["forwards"][row] == one.nfe


@pytest.mark.parametrize("bad, message", [
    (dict(threshold=1.5), "threshold must be in"),
    (dict(threshold=-0.1), "threshold must be in"),
    (dict(threshold=float("nan")), "'threshold' must be a finite number"),
    (dict(edit_threshold=2.0), "edit_threshold must be in"),
    (dict(max_post_edit_steps=-1), "max_post_edit_steps must be between"),
    (dict(max_post_edit_steps=10**7), "max_post_edit_steps must be between"),
    (dict(penalty_lambda=-1.0), "penalty_lambda must be"),
    (dict(penalty_lambda=float("inf")), "penalty_lambda'? must be a finite number"),
    (dict(block_length=5), "multiple of block_length"),
    (dict(gen_length=0), "gen_length must be"),
    (dict(eos_policy="early"), "eos_policy must be one of"),
    (dict(temperature=0.7), "has no option 'temperature'"),
])
def test_invalid_options_are_refused(bad, message):
    model = dlm.load("tiny-mdm-instruct")
    opts = dict(gen_length=16, block_length=8)
    opts.update(bad)
    with pytest.raises(DLMError, match=message):
        dlm.generate(model, torch.tensor([[5, 6, 7]]), sampler="edit", **opts)
