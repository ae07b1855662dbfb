"""dlm's LLaDA implementation: padding, GQA, dtypes, tying and the config switches."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_llada


def test_left_padding_leaves_real_positions_unchanged():
    """RoPE is relative and padded keys are masked: padding shifts nothing the real tokens see."""
    model = make_tiny_llada(seed=1, n_kv_heads=2)
    ids = torch.randint(0, 60, (1, 10), generator=torch.Generator().manual_seed(0))
    alone = model(ids).logits
    padded = torch.cat([torch.full((1, 5), 61), ids], dim=1)
    am = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 10, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded, attention_mask=am).logits[:, 5:], alone, atol=1e-5, rtol=1e-5)
    # and the pad contents are invisible
    other = padded.clone()
    other[:, :5] = 7
    torch.testing.assert_close(model(other, attention_mask=am).logits[:, 5:], alone, atol=1e-5, rtol=1e-5)


def test_all_ones_mask_is_a_no_op(tiny_llada):
    ids = torch.randint(0, 60, (2, 7))
    torch.testing.assert_close(tiny_llada(ids, attention_mask=torch.ones_like(ids)).logits, tiny_llada(ids).logits,
                               rtol=0, atol=0)


def test_attention_is_bidirectional(tiny_llada):
    ids = torch.randint(0, 60, (1, 8), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 60
    assert not torch.allclose(tiny_llada(ids).logits[:, 0], tiny_llada(changed).logits[:, 0])


def test_causal_attention_bias_makes_it_causal(tiny_llada):
    ids = torch.randint(0, 60, (1, 8), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 60
    causal = torch.full((8, 8), torch.finfo(torch.float).min).triu(1)[None, None]
    a = tiny_llada(ids, attention_bias=causal).logits[:, :-1]
    b = tiny_llada(changed, attention_bias=causal).logits[:, :-1]
    torch.testing.assert_close(a, b)


def test_logits_from_slices_the_head(tiny_llada):
    ids = torch.randint(0, 60, (2, 9))
    full = tiny_llada(ids).logits
    assert torch.equal(tiny_llada(ids, logits_from=5).logits, full[:, 5:])  # bit-exact: the sampler relies on it


@pytest.mark.parametrize("overrides", [dict(weight_tying=True), dict(input_emb_norm=True, scale_logits=True),
                                       dict(include_bias=True), dict(n_kv_heads=1)])
def test_config_switches_build_and_run(overrides):
    model = make_tiny_llada(seed=2, **overrides)
    assert ("model.transformer.ff_out.weight" in model.net.state_dict()) != bool(overrides.get("weight_tying"))
    out = model(torch.randint(0, 60, (1, 5))).logits
    assert out.shape == (1, 5, 64) and torch.isfinite(out).all()


def test_bf16_forward_close_to_fp32():
    model = make_tiny_llada(seed=1)
    ids = torch.randint(0, 60, (2, 12))
    am = torch.ones_like(ids)
    am[1, :4] = 0
    ref = model(ids, attention_mask=am).logits
    low = model.to(torch.bfloat16)(ids, attention_mask=am).logits.float()
    assert (low - ref).abs().max() < 0.1 * ref.abs().max()
    assert (low.argmax(-1) == ref.argmax(-1)).float().mean() > 0.8
