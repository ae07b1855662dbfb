"""Seeds: ``seed=int`` is one stream for the batch (the reference's), ``seed=[...]`` one per row,
so that a row samples the same alone or in any batch (llada and ar, temperature > 0)."""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm.sampling.batching import left_pad
from test_autoregressive import causal_lm  # noqa: F401 - the tiny causal LM fixture

LLADA_ROWS = [[5, 9, 14, 2, 33, 7], [11, 3, 40], [8]]
AR_ROWS = [[0, 4, 100, 200, 300, 6, 5], [0, 4, 999, 6, 5], [0, 4, 7, 8, 9, 10, 11, 12, 6, 5]]
LLADA_KW = [dict(sampler="llada", steps=8, gen_length=8, temperature=1.0),
            dict(sampler="llada", steps=8, gen_length=8, block_length=4, temperature=0.7, remasking="random"),
            dict(sampler="llada", steps=4, gen_length=8, temperature=1.0, cfg_scale=1.0)]
AR_KW = dict(sampler="ar", gen_length=8, temperature=1.5, stop_at_eos=False)


def generated(model, rows, seeds, kw) -> list[list[int]]:
    """Each row's generated ids after decoding ``rows`` as one left-padded batch."""
    ids, mask = left_pad(model, rows)
    return dlm.generate(model, ids, mask, seed=seeds, **kw)[:, ids.shape[1]:].tolist()


def assert_rows_independent_of_batch(model, rows, kw):
    seeds = [101, 7, 55]
    batched = generated(model, rows, seeds, kw)
    for i, row in enumerate(rows):
        assert generated(model, [row], [seeds[i]], kw) == [batched[i]]  # alone
    order = [2, 0, 1]  # another batch: other neighbours, other padding
    shuffled = generated(model, [rows[i] for i in order], [seeds[i] for i in order], kw)
    assert shuffled == [batched[i] for i in order]
    assert generated(model, rows, [1, 2, 3], kw) != batched  # the seeds do matter


@pytest.mark.parametrize("kw", LLADA_KW, ids=["gumbel", "random-remasking-blocks", "cfg"])
def test_per_row_seeds_llada(tiny_llada, kw):
    assert_rows_independent_of_batch(tiny_llada, LLADA_ROWS, kw)


def test_per_row_seeds_ar(causal_lm):  # noqa: F811
    assert_rows_independent_of_batch(causal_lm, AR_ROWS, AR_KW)


def test_shared_seed_is_the_global_stream_and_batch_dependent(tiny_llada):
    kw = LLADA_KW[0]
    ids, mask = left_pad(tiny_llada, LLADA_ROWS)
    torch.manual_seed(3)
    global_rng = dlm.generate(tiny_llada, ids, mask, **kw)
    assert torch.equal(dlm.generate(tiny_llada, ids, mask, seed=3, **kw), global_rng)
    batched = generated(tiny_llada, LLADA_ROWS, 3, kw)
    assert any(generated(tiny_llada, [r], 3, kw) != [batched[i]] for i, r in enumerate(LLADA_ROWS))


@pytest.mark.parametrize("which", ["llada", "ar"])
def test_one_unpadded_row_with_seed_list_equals_int_seed(tiny_llada, causal_lm, which):  # noqa: F811
    model, row, kw = (tiny_llada, LLADA_ROWS[0], LLADA_KW[1]) if which == "llada" else (causal_lm, AR_ROWS[0], AR_KW)
    assert generated(model, [row], [9], kw) == generated(model, [row], 9, kw)


@pytest.mark.parametrize("seed, message", [
    ([1, 2], "2 per-row seeds, but the batch has 3 rows"),
    ("3", "seed must be an integer"),
    ([1, 2.5, 3], r"seed\[1\] must be an integer"),
    ([1, True, 3], r"seed\[1\] must be an integer"),
    (2 ** 70, "out of range"),
])
def test_bad_seeds_are_rejected(tiny_llada, seed, message):
    with pytest.raises(dlm.DLMError, match=message):
        dlm.generate(tiny_llada, torch.tensor([[1, 2], [3, 4], [5, 6]]), gen_length=4, temperature=1.0, seed=seed)
