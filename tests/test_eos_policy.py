"""EOS policies of the block samplers (llada, fast): stop_after_eos and grow."""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm.errors import DLMError
from dlm.sampling.base import DenoiseState
from dlm.sampling.eos_policy import finish_ended_rows
from dlm.sampling.batching import answer_ids, left_pad

SAMPLERS = [("llada", dict(steps=32)), ("fast", dict(threshold=0.9, cache="dual")), ("fast", dict(steps=32))]


@pytest.mark.parametrize("name", ["tiny-mdm-instruct", "tiny-a2d-instruct"])
@pytest.mark.parametrize("sampler, extra", SAMPLERS)
def test_stop_after_eos_keeps_the_answer_and_saves_passes(name, sampler, extra):
    model = dlm.load(name)
    ids = torch.tensor([model.encode_prompt("What does ls do?")])
    kw = dict(sampler=sampler, gen_length=32, block_length=4, return_dict=True, **extra)
    full = dlm.generate(model, ids, **kw)
    stop = dlm.generate(model, ids, eos_policy="stop_after_eos", **kw)
    assert answer_ids(model, stop.generated[0].tolist()) == answer_ids(model, full.generated[0].tolist())
    assert stop.nfe < full.nfe  # both tiny models end their answer within the first blocks
    assert stop.stats["blocks_run"] < stop.stats["blocks"] == 8
    assert stop.stats["forwards"] == [stop.nfe]
    n = len(answer_ids(model, stop.generated[0].tolist()))
    assert set(stop.generated[0, n:].tolist()) <= set(model.facts.stop_ids)  # the rest is EOS


@pytest.mark.parametrize("policy", ["stop_after_eos", "grow"])
@pytest.mark.parametrize("sampler, extra", SAMPLERS)
def test_padded_rows_equal_batch_one_under_eos_policies(policy, sampler, extra):
    model = dlm.load("tiny-a2d-instruct")
    prompts = [model.encode_prompt(t) for t in ("What does ls do?", "Hi", "Summarise: dpkg installs .deb files.")]
    ids, mask = left_pad(model, prompts)
    kw = dict(sampler=sampler, gen_length=32, block_length=4, eos_policy=policy, **extra)
    batch = dlm.generate(model, ids, mask, return_dict=True, **kw)
    for row, prompt in enumerate(prompts):
        alone = dlm.generate(model, torch.tensor([prompt]), return_dict=True, **kw)
        assert batch.generated[row].tolist() == alone.generated[0].tolist(), row
        assert batch.stats["forwards"][row] <= batch.nfe
    assert not bool((batch.generated == model.facts.mask_id).any())


def test_grow_shows_only_the_blocks_so_far():
    model = dlm.load("tiny-a2d-instruct")
    ids = torch.tensor([model.encode_prompt("What does ls do?")])
    seen = []
    real = model.forward

    def spy(x, *args, **kwargs):
        seen.append(x.shape[1])
        return real(x, *args, **kwargs)

    model.forward = spy
    try:
        out = dlm.generate(model, ids, sampler="llada", gen_length=32, block_length=8, steps=32, eos_policy="grow",
                           return_dict=True)
    finally:
        del model.forward
    P = ids.shape[1]
    assert seen[0] == P + 8 and all(n <= P + 32 for n in seen)
    assert out.sequences.shape == (1, P + 32)


def test_an_answer_ends_at_a_stop_token_followed_by_stops_or_masks_only():
    model = dlm.load("tiny-mdm-instruct")
    eos, mask = model.facts.eos_ids[0], model.facts.mask_id
    a, b = [t for t in range(10, 40) if t not in model.facts.stop_ids and t != mask][:2]
    x = torch.tensor([[a, b, eos, mask, mask, mask],   # ended: filled
                      [a, eos, b, mask, mask, mask],   # a token after the EOS: not ended
                      [a, b, b, mask, mask, mask],     # no EOS
                      [a, b, eos, eos, mask, mask]])   # ended
    state = DenoiseState(model, x.clone(), None, 1, mask)
    finish_ended_rows(state, 4)
    assert state.ended == [True, False, False, True]
    assert state.x[0].tolist() == [a, b, eos, eos, eos, eos]
    assert state.x[1].tolist() == x[1].tolist() and state.x[2].tolist() == x[2].tolist()


def test_eos_policy_is_validated():
    model = dlm.load("tiny-mdm-instruct")
    with pytest.raises(DLMError, match="eos_policy must be one of"):
        dlm.generate(model, torch.tensor([[5, 6]]), sampler="llada", gen_length=8, eos_policy="soon")
    with pytest.raises(DLMError, match="has no option 'eos_policy'"):
        dlm.generate(model, torch.tensor([[5, 6]]), sampler="dream", gen_length=8, eos_policy="grow")
