"""Token-for-token parity of the dsl sampler with DSL-LLaDA's ``generate_sde_text``.

Fixtures: tests/fixtures/dsl (derived by scripts/derive_dsl_fixtures.py from fengsxy/DSL-LLaDA @33f29254
in a transformers 4.46 environment; see its README). The checkpoint is in the released layout: LLaDA's
``model.transformer.*`` tensors plus the top-level DSL tensors. The reference runs the backbone in
bfloat16 (as its ``load_model`` does), so dlm loads it in bfloat16 too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import dlm
from dlm.errors import DLMError
from dlm.sampling.dsl import snr_schedule

FIXTURES = Path(__file__).parent / "fixtures" / "dsl"
CASES = [c for c in json.loads((FIXTURES / "cases.json").read_text()) if c["function"] == "generate_sde_text"]
BF16 = [c for c in CASES if c["backbone_dtype"] == "bf16"]


@pytest.fixture(scope="module")
def model():
    return dlm.load(FIXTURES / "tiny", dtype="bfloat16")


def test_the_released_layout_loads(model):
    assert model.dsl is not None and model.dsl.noise_dim == 16
    assert float(model.dsl.converter.beta.detach()) == pytest.approx(1.3)
    assert model.dsl.noise_embed.weight.dtype == torch.float32  # DSL tensors stay fp32 under a bf16 backbone


def _options(case) -> dict:
    options = {"steps": case["nfe"], "gen_length": case["gen_length"]}
    overrides = case["harness_overrides"]
    if "adaptive_ns" in json.dumps(overrides) or "noise_scale" in json.dumps(overrides):
        options["noise_scale"] = case["noise_scale"]
    if "beta" in json.dumps(overrides):
        options["beta"] = case["beta_infer"]
    return options


@pytest.mark.parametrize("case", [c for c in BF16 if c["nfe"] >= 4 and c["nfe"] % 2 == 0], ids=lambda c: c["name"])
def test_generate_sde_text_parity(model, case):
    out = dlm.generate(model, torch.tensor([case["prompt"]]), sampler="dsl", seed=case["seed"], return_dict=True,
                       **_options(case))
    P = len(case["prompt"])
    assert out.sequences[0, P:].tolist() == case["output"]
    assert out.nfe == case["backbone_passes"]
    assert out.stats["snr_schedule"] == pytest.approx(case["snr_schedule"], rel=0, abs=0)
    assert out.stats["noise_scale"] == pytest.approx(case["noise_scale"])
    assert out.stats["beta"] == pytest.approx(case["beta_infer"])


@pytest.mark.parametrize("case", [c for c in CASES if c["nfe"] < 4 or c["nfe"] % 2], ids=lambda c: c["name"])
def test_budgets_the_reference_rounds_are_refused(model, case):
    # generate_sde_text runs max(nfe // 2, 2) Heun steps: NFE 2-5 all cost 5 passes. dlm refuses such budgets
    # instead of adjusting them (steps must be even and >= 4).
    with pytest.raises(DLMError, match="even and >= 4"):
        dlm.generate(model, torch.tensor([case["prompt"]]), sampler="dsl", steps=case["nfe"],
                     gen_length=case["gen_length"])


def test_schedule_values_match_the_reference():
    for case in CASES:
        if case["nfe"] >= 4 and case["nfe"] % 2 == 0:
            assert snr_schedule(case["nfe"]).tolist() == case["snr_schedule"]
