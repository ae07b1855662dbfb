"""Parity with the reference LLaDA implementation on tiny random weights.

Fixtures in tests/fixtures/llada/ were produced by running LLaDA's own ``modeling_llada.py``,
``generate.py`` and ``get_log_likelihood.py`` (see that folder's README); dlm must reproduce the
logits to 1e-5 (the issue asks for 1e-4) and the generated tokens exactly, with the same random stream.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dlm

HERE = Path(__file__).resolve().parent / "fixtures" / "llada"
sys.path.insert(0, str(HERE))
from make_checkpoint import make_llada_checkpoint  # noqa: E402

MANIFEST = json.loads((HERE / "manifest.json").read_text())
EXPECTED = load_file(str(HERE / "expected_logits.safetensors"))
GENERATE_CASES = json.loads((HERE / "generate_cases.json").read_text())
LOGLIK_CASES = json.loads((HERE / "loglikelihood_cases.json").read_text())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    big_dir = tmp_path_factory.mktemp("llada_big")
    make_llada_checkpoint(str(big_dir), **MANIFEST["checkpoints"]["big"]["make_llada_checkpoint_kwargs"])
    return {"tiny": dlm.load(HERE / "tiny"), "big": dlm.load(big_dir)}


def test_tiny_fixture_is_sharded_with_gqa(checkpoints):
    model = checkpoints["tiny"]
    assert (HERE / "tiny" / "model.safetensors.index.json").exists()
    assert model.net.config.kv_heads < model.net.config.n_heads


@pytest.mark.parametrize("padded", [False, True])
def test_tiny_logits_match_reference(checkpoints, padded):
    model = checkpoints["tiny"]
    key = "tiny.padded" if padded else "tiny"
    ids = EXPECTED[f"{key}.input_ids"]
    am = EXPECTED["tiny.padded.attention_mask"] if padded else None
    logits = model(ids, attention_mask=am).logits
    torch.testing.assert_close(logits, EXPECTED[f"{key}.logits"], atol=1e-5, rtol=1e-5)
    if padded:  # the same padded ids without a mask: the reference then attends to pads
        torch.testing.assert_close(model(ids).logits, EXPECTED["tiny.padded.logits_no_mask"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padded", [False, True])
def test_big_vocab_logits_match_reference(checkpoints, padded):
    model = checkpoints["big"]
    key = "big.padded" if padded else "big"
    ids = EXPECTED[f"{key}.input_ids"]
    am = EXPECTED["big.padded.attention_mask"] if padded else None
    logits = model(ids, attention_mask=am).logits
    for name, sl in (("0:512", slice(0, 512)), ("126070:126091", slice(126070, 126091)),
                     ("126336:126351", slice(126336, 126351))):
        torch.testing.assert_close(logits[..., sl], EXPECTED[f"{key}.logits[{name}]"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits.logsumexp(-1), EXPECTED[f"{key}.logsumexp"], atol=1e-5, rtol=1e-5)
    assert torch.equal(logits.argmax(-1), EXPECTED[f"{key}.argmax"])


GEN_KEYS = ("steps", "gen_length", "block_length", "temperature", "cfg_scale", "remasking", "mask_id",
            "logits_eos_inf", "confidence_eos_eot_inf")


@pytest.mark.parametrize("case", GENERATE_CASES, ids=[c["name"] for c in GENERATE_CASES])
def test_generate_matches_reference(checkpoints, case):
    model = checkpoints[case["checkpoint"]]
    prompt = torch.tensor(case["prompt"])
    am = torch.tensor(case["attention_mask"]) if case["attention_mask"] is not None else None
    torch.manual_seed(case["seed"])
    out = dlm.generate(model, prompt, am, sampler="llada", **{k: case[k] for k in GEN_KEYS})
    assert out.tolist() == case["output"]


@pytest.mark.parametrize("case", LOGLIK_CASES, ids=[c["name"] for c in LOGLIK_CASES])
def test_loglikelihood_matches_reference(checkpoints, case):
    model = checkpoints[case["checkpoint"]]
    if case["mc_num"] % case["batch_size"]:
        # The reference silently drops the remainder (mc_num // batch_size rounds); dlm rejects it.
        with pytest.raises(dlm.DLMError, match="multiple of batch_size"):
            dlm.loglikelihood(model, case["prompt"], case["answer"], mc_num=case["mc_num"],
                              batch_size=case["batch_size"])
        return
    torch.manual_seed(case["seed"])
    value = dlm.loglikelihood(model, case["prompt"], case["answer"], mc_num=case["mc_num"],
                              batch_size=case["batch_size"], cfg_scale=case["cfg_scale"], mask_id=case["mask_id"])
    assert value == pytest.approx(case["value"], rel=1e-5, abs=1e-4)
