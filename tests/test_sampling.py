"""The LLaDA sampler: schedule, validation, batching, padding, NFE, history, determinism."""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm.sampling.llada import transfer_schedule
from naive_loop import naive_generate
from conftest import make_tiny_llada
from test_autoregressive import causal_lm  # noqa: F401 - a tiny shifted (causal) LM


def prompts(batch=3, length=6, seed=0):
    return torch.randint(0, 60, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_transfer_schedule_matches_reference_rule():
    sched = transfer_schedule(torch.tensor([10, 3, 0]), 4)
    assert sched.tolist() == [[3, 3, 2, 2], [1, 1, 1, 0], [0, 0, 0, 0]]
    assert sched.sum(1).tolist() == [10, 3, 0]


@pytest.mark.parametrize("kw", [
    dict(steps=8, gen_length=8, block_length=8),
    dict(steps=6, gen_length=16, block_length=8),
    dict(steps=5, gen_length=12, block_length=12),
    dict(steps=4, gen_length=8, block_length=4, remasking="random"),
    dict(steps=8, gen_length=8, block_length=4, temperature=0.8),
    dict(steps=4, gen_length=8, block_length=8, cfg_scale=1.5),
])
def test_matches_naive_loop(tiny_llada, kw):
    """dlm's windowed sampler equals a plain full-logits loop, token for token, with the same RNG stream."""
    ids = prompts()
    am = torch.ones_like(ids)
    torch.manual_seed(7)
    ours = dlm.generate(tiny_llada, ids, am, **kw)
    torch.manual_seed(7)
    theirs = naive_generate(tiny_llada, ids, am, **kw)
    assert torch.equal(ours, theirs)
    assert not (ours == 63).any()


def test_window_logits_off_gives_the_same_tokens(tiny_llada):
    ids = prompts()
    kw = dict(steps=8, gen_length=16, block_length=8)
    assert torch.equal(dlm.generate(tiny_llada, ids, **kw), dlm.generate(tiny_llada, ids, window_logits=False, **kw))


def test_every_masked_position_is_filled_and_prompt_kept(tiny_llada):
    ids = prompts()
    out = dlm.generate(tiny_llada, ids, steps=8, gen_length=16, block_length=8)
    assert out.shape == (3, 22)
    assert torch.equal(out[:, :6], ids)
    assert not (out == 63).any()


def test_batched_equals_one_at_a_time(tiny_llada):
    ids = prompts(batch=4)
    kw = dict(steps=8, gen_length=16, block_length=8)
    batched = dlm.generate(tiny_llada, ids, **kw)
    for i in range(4):
        assert torch.equal(batched[i:i + 1], dlm.generate(tiny_llada, ids[i:i + 1], **kw))


def test_left_padded_batch_equals_unpadded_rows(tiny_llada):
    """RoPE is relative and pads are masked: a padded row decodes like the prompt alone."""
    rows = [torch.tensor([5, 9, 14, 2, 33, 7]), torch.tensor([11, 3, 40]), torch.tensor([8])]
    width = max(len(r) for r in rows)
    ids = torch.full((3, width), 61)
    am = torch.zeros(3, width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        am[i, width - len(r):] = 1
    kw = dict(steps=8, gen_length=8, block_length=8)
    batched = dlm.generate(tiny_llada, ids, am, **kw)
    for i, r in enumerate(rows):
        alone = dlm.generate(tiny_llada, r[None], **kw)
        assert torch.equal(batched[i, width:], alone[0, len(r):])


def test_nfe_history_and_return_dict(tiny_llada):
    out = dlm.generate(tiny_llada, prompts(batch=2), steps=8, gen_length=16, block_length=8, return_dict=True,
                       output_history=True)
    assert out.nfe == 8 and out.history.shape == (9, 2, 22)
    masks = (out.history[:, :, 6:] == 63).sum(dim=(1, 2)).tolist()
    assert masks[0] == 32 and masks[-1] == 0 and masks == sorted(masks, reverse=True)
    assert torch.equal(out.history[-1], out.sequences)
    cfg = dlm.generate(tiny_llada, prompts(batch=2), steps=4, gen_length=8, cfg_scale=1.0, return_dict=True)
    assert cfg.nfe == 8  # a CFG step is two denoiser evaluations


def test_seed_makes_sampling_reproducible(tiny_llada):
    kw = dict(steps=8, gen_length=8, temperature=1.0, seed=123)
    a = dlm.generate(tiny_llada, prompts(), **kw)
    b = dlm.generate(tiny_llada, prompts(), **kw)
    c = dlm.generate(tiny_llada, prompts(), **{**kw, "seed": 124})
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_eos_suppression(tiny_llada):
    ids = prompts()
    model = make_tiny_llada(seed=11)
    with torch.no_grad():  # make EOS (62) the top prediction everywhere
        model.net.model.transformer.ff_out.weight[62] = 5.0
    plain = dlm.generate(model, ids, steps=8, gen_length=8)
    assert (plain[:, 6:] == 62).float().mean() > 0.5
    suppressed = dlm.generate(model, ids, steps=8, gen_length=8, logits_eos_inf=True)
    assert not (suppressed[:, 6:] == 62).any()


@pytest.mark.parametrize("kw, message", [
    (dict(gen_length=10, block_length=3), "multiple of block_length"),
    (dict(gen_length=16, block_length=4, steps=6), "multiple of the number of blocks"),
    (dict(gen_length=0), "gen_length must be >= 1"),
    (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(remasking="entropy"), "remasking must be"),
    (dict(cfg_scale=-0.5), "cfg_scale"),
    (dict(stepz=3), "has no option 'stepz'"),
    (dict(steps="8"), "must be an integer"),
    (dict(mask_id=999), "outside the vocabulary"),
    (dict(temperature=float("nan")), "finite number"),
    (dict(cfg_scale=float("inf")), "finite number"),
])
def test_invalid_settings_are_rejected(tiny_llada, kw, message):
    with pytest.raises(dlm.DLMError, match=message):
        dlm.generate(tiny_llada, prompts(), **kw)


def test_numpy_scalars_are_accepted(tiny_llada):
    import numpy as np

    a = dlm.generate(tiny_llada, prompts(), steps=np.int64(4), gen_length=np.int32(8), temperature=np.float32(0))
    assert torch.equal(a, dlm.generate(tiny_llada, prompts(), steps=4, gen_length=8))


def test_invalid_inputs_are_rejected(tiny_llada):
    with pytest.raises(dlm.DLMError, match="unknown sampler"):
        dlm.generate(tiny_llada, prompts(), sampler="nope")
    with pytest.raises(dlm.DLMError, match="left padding"):
        dlm.generate(tiny_llada, prompts(batch=1), torch.tensor([[1, 1, 1, 1, 1, 0]]), gen_length=4)
    with pytest.raises(dlm.DLMError, match="outside the vocabulary"):
        dlm.generate(tiny_llada, torch.tensor([[1, 2, 64]]), gen_length=4)
    with pytest.raises(dlm.DLMError, match="padding positions hold the mask token"):
        dlm.generate(tiny_llada, torch.tensor([[63, 2, 3]]), torch.tensor([[0, 1, 1]]), gen_length=4)


@pytest.mark.parametrize("input_ids, message", [
    (torch.empty(0, 5, dtype=torch.long), "no rows"),
    ([], "input_ids is empty"),
    ([[1, 2], [3]], "equal-length lists"),
    ([[1.5, 2.0]], "integer token ids"),
])
def test_empty_or_ragged_batches_are_clear_errors(tiny_llada, input_ids, message):
    with pytest.raises(dlm.DLMError, match=message):
        dlm.generate(tiny_llada, input_ids, gen_length=4)


def test_no_prompts_for_generate_answers():
    from dlm.sampling.batching import generate_answers

    with pytest.raises(dlm.DLMError, match="no prompts"):
        generate_answers(make_tiny_llada(), [], gen_length=4)


def test_attention_mask_as_lists(tiny_llada):
    out = dlm.generate(tiny_llada, [61, 5, 6], [0, 1, 1], steps=4, gen_length=4)  # one prompt, lists
    assert torch.equal(out, dlm.generate(tiny_llada, torch.tensor([[61, 5, 6]]), torch.tensor([[0, 1, 1]]),
                                         steps=4, gen_length=4))


def test_all_padding_row_is_an_empty_prompt_for_unshifted_models(tiny_llada):
    """left_pad gives an empty prompt an all-zero mask row: unconditional generation for that row,
    its pads unseen (its logits are those of the empty prompt alone)."""
    from dlm.sampling.batching import left_pad

    ids, mask = left_pad(tiny_llada, [[5, 9, 14], []])
    assert mask[1].sum() == 0
    out = dlm.generate(tiny_llada, ids, mask, steps=4, gen_length=4)
    assert not (out[:, 3:] == 63).any()
    canvas = torch.cat([ids, torch.full((2, 4), 63)], 1)
    padded = tiny_llada(canvas, attention_mask=torch.cat([mask, torch.ones(2, 4, dtype=torch.long)], 1)).logits
    alone = tiny_llada(torch.full((1, 4), 63)).logits
    torch.testing.assert_close(padded[1, 3:], alone[0], atol=1e-5, rtol=1e-5)


def test_all_padding_row_is_an_error_for_shifted_models(causal_lm):  # noqa: F811
    ids, mask = torch.tensor([[0, 4, 5], [2, 2, 2]]), torch.tensor([[1, 1, 1], [0, 0, 0]])
    with pytest.raises(dlm.DLMError, match="row 1 of attention_mask is all zeros.*at least one token"):
        dlm.generate(causal_lm, ids, mask, gen_length=4)


@pytest.mark.parametrize("kw", [dict(), dict(cfg_scale=1.0)])
def test_non_finite_logits_are_an_error_not_an_empty_answer(kw):
    model = make_tiny_llada(seed=5)
    with torch.no_grad():
        model.net.model.transformer.ff_out.weight[7, 0] = float("nan")
    with pytest.raises(dlm.DLMError, match="NaN/inf logits.*try float32"):
        dlm.generate(model, prompts(), steps=4, gen_length=4, **kw)


def test_checkpoint_defaults_with_an_unknown_key_name_config_json(tiny_llada):
    tiny_llada.config["dlm_generation"] = {"gen_length": 8, "stepz": 4}
    try:
        with pytest.raises(dlm.DLMError, match=r"config.json: dlm_generation has 'stepz', which is no sampler's"):
            dlm.generate(tiny_llada, prompts(), steps=4)
        tiny_llada.config["dlm_generation"] = {"max_new_tokens": 8}  # a Hugging Face alias is understood
        assert dlm.generate(tiny_llada, prompts(), return_dict=True).options["gen_length"] == 8
    finally:
        del tiny_llada.config["dlm_generation"]


def test_hugging_face_aliases(tiny_llada):
    out = dlm.generate(tiny_llada, prompts(), max_new_tokens=4, do_sample=False, return_dict=True)
    assert out.options["gen_length"] == 4 and out.options["temperature"] == 0.0
    assert torch.equal(out.sequences, dlm.generate(tiny_llada, prompts(), gen_length=4))
    sampled = dlm.generate(tiny_llada, prompts(), gen_length=4, do_sample=True, temperature=0.5, return_dict=True)
    assert sampled.options["temperature"] == 0.5


@pytest.mark.parametrize("kw, message", [
    (dict(max_new_tokens=4, gen_length=4), "another name for gen_length"),
    (dict(do_sample=True), r"do_sample=true needs a temperature > 0"),
    (dict(do_sample=False, temperature=0.7), "do_sample=false means temperature 0"),
    (dict(do_sample="yes"), "do_sample must be true or false"),
    (dict(num_beams=4), "beam search"),
    (dict(top_p=0.9), "top-p"),
    (dict(top_k=50), "top-k"),
    (dict(max_length=40), "use gen_length"),
])
def test_hugging_face_names_without_an_equivalent_are_refused(tiny_llada, kw, message):
    with pytest.raises(dlm.DLMError, match=message):
        dlm.generate(tiny_llada, prompts(), **kw)
