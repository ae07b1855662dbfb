"""Masked diffusion core: forward process, ELBO losses and the Monte Carlo likelihood."""

from __future__ import annotations

import importlib
import inspect
import math

import pytest
import numpy
import torch
import torch.nn.functional as F

import dlm
from dlm.diffusion import mask_tokens, masked_diffusion_loss, sample_t, stratified_mask
from conftest import make_tiny_llada


def test_sample_t_range_and_mask_rate():
    g = torch.Generator().manual_seed(0)
    t = sample_t(10_000, generator=g)
    assert float(t.min()) >= 1e-3 and float(t.max()) <= 1.0 and abs(float(t.mean()) - 0.5) < 0.02
    ids = torch.zeros(4, 5000, dtype=torch.long)
    noisy, masked = mask_tokens(ids, 9, torch.tensor([0.1, 0.5, 0.9, 1.0]), generator=g)
    rates = masked.float().mean(1).tolist()
    assert abs(rates[0] - 0.1) < 0.02 and abs(rates[1] - 0.5) < 0.02 and rates[3] == 1.0
    assert torch.equal(noisy == 9, masked)


def test_pretraining_loss_is_the_1_over_t_weighted_ce(tiny_llada):
    ids = torch.randint(0, 60, (3, 12), generator=torch.Generator().manual_seed(1))
    out = masked_diffusion_loss(tiny_llada, ids, 63, generator=torch.Generator().manual_seed(5))
    # recompute by hand with the same random stream
    g = torch.Generator().manual_seed(5)
    t = sample_t(3, generator=g)
    noisy, masked = mask_tokens(ids, 63, t, generator=g)
    logits = tiny_llada(noisy).logits
    ce = F.cross_entropy(logits[masked], ids[masked], reduction="none")
    manual = (ce / t[:, None].expand(3, 12)[masked]).sum() / (3 * 12)
    torch.testing.assert_close(out.loss, manual)
    assert out.masked_tokens == int(masked.sum())
    out.loss.backward()
    assert tiny_llada.net.model.transformer.wte.weight.grad is not None
    tiny_llada.zero_grad()


def test_sft_loss_never_masks_the_prompt_and_normalises_by_answer_length(tiny_llada):
    ids = torch.randint(0, 60, (2, 10), generator=torch.Generator().manual_seed(2))
    prompt_lengths = torch.tensor([4, 7])
    g = torch.Generator().manual_seed(3)
    out = masked_diffusion_loss(tiny_llada, ids, 63, prompt_lengths=prompt_lengths, generator=g)
    g = torch.Generator().manual_seed(3)
    t = sample_t(2, generator=g)
    maskable = torch.arange(10)[None] >= prompt_lengths[:, None]
    noisy, masked = mask_tokens(ids, 63, t, maskable, generator=g)
    assert not masked[0, :4].any() and not masked[1, :7].any()
    logits = tiny_llada(noisy).logits
    total = 0.0
    for b, n_answer in ((0, 6), (1, 3)):
        ce = F.cross_entropy(logits[b][masked[b]], ids[b][masked[b]], reduction="sum")
        total = total + ce / t[b] / n_answer
    torch.testing.assert_close(out.loss, total / 2)


def test_stratified_mask_counts_cover_the_answer():
    batch = torch.arange(20).repeat(8, 1)
    noisy, ratio = stratified_mask(batch, prompt_length=4, mask_id=99, generator=torch.Generator().manual_seed(0))
    assert not (noisy[:, :4] == 99).any()
    counts = (noisy == 99).sum(1)
    assert counts.min() >= 1 and counts.max() <= 16
    torch.testing.assert_close(ratio[:, 0], counts / 16)
    assert len(set(counts.tolist())) == 8  # stratified: one count per stratum


def test_loglikelihood_validation_and_determinism(tiny_llada):
    kw = dict(mc_num=8, batch_size=4, seed=0)
    a = dlm.loglikelihood(tiny_llada, [1, 2, 3], [4, 5, 6, 7], **kw)
    assert a == dlm.loglikelihood(tiny_llada, [1, 2, 3], [4, 5, 6, 7], **kw)
    assert a < 0
    with pytest.raises(dlm.DLMError, match="multiple of batch_size"):
        dlm.loglikelihood(tiny_llada, [1], [2], mc_num=10, batch_size=4)
    with pytest.raises(dlm.DLMError, match="answer is empty"):
        dlm.loglikelihood(tiny_llada, [1], [], mc_num=4, batch_size=4)


def test_loglikelihood_scores_each_row_of_a_batch(tiny_llada):
    """A (B, L) batch gives one value per row, each equal to the row scored alone."""
    kw = dict(mc_num=8, batch_size=4, seed=0)
    one = dlm.loglikelihood(tiny_llada, [1, 2, 3], [4, 5, 6, 7], **kw)
    two = dlm.loglikelihood(tiny_llada, torch.tensor([[1, 2, 3]] * 2), torch.tensor([[4, 5, 6, 7]] * 2), **kw)
    assert two == [one, one]
    ragged = dlm.loglikelihood(tiny_llada, [[1, 2, 3], [9]], [[4, 5, 6, 7], [8, 8]], **kw)
    assert ragged[0] == one and ragged[1] == dlm.loglikelihood(tiny_llada, [9], [8, 8], **kw)
    assert dlm.loglikelihood(tiny_llada, numpy.array([[1, 2, 3]] * 2), numpy.array([[4, 5, 6, 7]] * 2), **kw) == two
    assert dlm.loglikelihood(tiny_llada, list(torch.tensor([1, 2, 3])), [4, 5, 6, 7], **kw) == one  # 0-d ids
    shared_prompt = dlm.loglikelihood(tiny_llada, [1, 2, 3], [[4, 5, 6, 7], [8, 8]], **kw)
    assert shared_prompt[0] == one and len(shared_prompt) == 2
    with pytest.raises(dlm.DLMError, match="2 rows but answer has 3"):
        dlm.loglikelihood(tiny_llada, [[1], [2]], [[3], [4], [5]], **kw)
    with pytest.raises(dlm.DLMError, match="empty batch"):
        dlm.loglikelihood(tiny_llada, torch.empty(0, 3, dtype=torch.long), torch.empty(0, 2, dtype=torch.long), **kw)
    with pytest.raises(dlm.DLMError, match=r"answer is empty \(row 1\)"):
        dlm.loglikelihood(tiny_llada, [[1], [2]], [[3], []], **kw)


def test_loglikelihood_of_a_causal_lm_is_exact():
    """Causal LMs are scored exactly (sum of next-token log-probs), the same on every call."""
    model = dlm.load("tiny-ar")
    ids = model.encode_prompt("This package provides a Python 3 library for parsing YAML.", chat=False)
    prompt, answer = ids[:4], ids[4:]
    a = dlm.loglikelihood(model, prompt, answer)
    assert a == dlm.loglikelihood(model, prompt, answer)  # no Monte Carlo noise
    with torch.no_grad():
        logits = model.net(input_ids=torch.tensor([ids])).logits[0].float()  # (L, V)
    logp = torch.log_softmax(logits, -1)
    expected = sum(float(logp[i - 1, ids[i]]) for i in range(4, len(ids)))
    assert a == pytest.approx(expected, abs=1e-4)
    assert dlm.loglikelihood(model, [prompt, prompt], [answer, answer[:3]])[0] == pytest.approx(a, abs=1e-5)
    with pytest.raises(dlm.DLMError, match="cfg_scale"):
        dlm.loglikelihood(model, prompt, answer, cfg_scale=1.0)
    with pytest.raises(dlm.DLMError, match="at least one token"):
        dlm.loglikelihood(model, [], answer)


def _docstring_text(modules: list[str]) -> bytes:
    parts = []
    for name in modules:
        mod = importlib.import_module(name)
        for _, obj in inspect.getmembers(mod):
            doc = inspect.getdoc(obj) if (inspect.isfunction(obj) or inspect.isclass(obj)) else None
            if doc and len(doc) > 80:
                parts.append(doc)
    return "\n\n".join(parts).encode("utf-8")


def test_a_minute_of_training_beats_uniform():
    """Train a tiny byte-level LLaDA on real English (stdlib docstrings) and score held-out text."""
    torch.manual_seed(0)
    model = make_tiny_llada(seed=0, tokenizer=True, std=0.02)
    tok, mask_id = model.tokenizer, model.facts.mask_id
    train = torch.tensor(list(_docstring_text(["argparse", "collections", "pathlib", "json", "subprocess"])))
    held_out = _docstring_text(["textwrap", "shutil"])
    vocab = model.facts.vocab_size
    g = torch.Generator().manual_seed(0)

    def elbo_bits_per_byte(n: int = 6) -> float:
        total, count = 0.0, 0
        for i in range(n):
            chunk = list(held_out[i * 400: i * 400 + 48])
            ll = dlm.loglikelihood(model, chunk[:16], chunk[16:], mc_num=32, batch_size=16, seed=i)
            total, count = total - ll, count + 32
        return total / count / math.log(2)

    before = elbo_bits_per_byte()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for step in range(300):
        starts = torch.randint(0, len(train) - 64, (16,), generator=g)
        batch = torch.stack([train[s:s + 64] for s in starts])
        loss = masked_diffusion_loss(model, batch, mask_id, generator=g).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    after = elbo_bits_per_byte()
    uniform = math.log2(vocab)
    assert before > uniform - 0.5  # random init: about uniform
    print(f"ELBO bits/byte: before {before:.2f}, after {after:.2f}, uniform {uniform:.2f}")
    assert after < uniform - 2.0, (before, after, uniform)  # learned real structure (uniform = 8.0 bits)
    # a real continuation is more likely than the same bytes shuffled
    chunk = list(held_out[1000:1048])
    shuffled = chunk[16:]
    torch.Generator().manual_seed(1)
    shuffled = [shuffled[i] for i in torch.randperm(len(shuffled), generator=torch.Generator().manual_seed(1))]
    real_ll = dlm.loglikelihood(model, chunk[:16], chunk[16:], mc_num=64, batch_size=16, seed=0)
    shuf_ll = dlm.loglikelihood(model, chunk[:16], shuffled, mc_num=64, batch_size=16, seed=0)
    assert real_ll > shuf_ll
    assert tok is not None
