"""ROUGE scoring and held-out likelihood helpers."""

import math

import pytest
import torch
import torch.nn.functional as F

from dlm.eval.perplexity import causal_nll_per_token, diffusion_nll_per_token, perplexity
from dlm.eval.rouge import rouge, rouge_per_sample


def test_rouge_stemmed_f_measure_times_100_and_empty_is_zero():
    scores = rouge_per_sample(["the cats are running fast", "", "   "], ["cat runs fast", "anything", "x"])
    # stemmed: cat/cats, run/running match; unigram P = 3/5, R = 3/3 -> F = 0.75
    assert scores[0]["rouge1"] == pytest.approx(75.0)
    assert scores[1] == scores[2] == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    assert rouge(["same words here"], ["same words here"]) == pytest.approx({"rouge1": 100.0, "rouge2": 100.0,
                                                                            "rougeL": 100.0})
    with pytest.raises(ValueError):
        rouge(["a"], [])


def test_causal_nll_is_the_mean_next_token_cross_entropy():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(11, 11)

        def forward(self, input_ids, use_cache=False):
            return type("O", (), {"logits": self.emb(input_ids)})

    class Wrapper:
        net = Net()

        def eval(self):
            return self

        device = torch.device("cpu")

    w = Wrapper()
    blocks = torch.randint(0, 11, (5, 9))
    want = F.cross_entropy(w.net.emb(blocks)[:, :-1].reshape(-1, 11), blocks[:, 1:].reshape(-1)).item()
    assert causal_nll_per_token(w, blocks, batch_size=2) == pytest.approx(want, rel=1e-6)
    assert perplexity(0.0) == 1.0 and perplexity(math.log(7)) == pytest.approx(7)


def test_diffusion_elbo_of_an_uninformed_model_is_log_vocab(tiny_llada):
    """With all-equal logits every masked token costs log V and the 1/ratio weights average to 1
    per token, so the stratified bound is exactly log V; a seed makes it reproducible."""
    V = tiny_llada.facts.vocab_size
    with torch.no_grad():
        saved = [p.clone() for p in tiny_llada.parameters()]
        for p in tiny_llada.parameters():
            p.zero_()
    try:
        blocks = torch.randint(0, 60, (3, 17))
        nll = diffusion_nll_per_token(tiny_llada, blocks, mc=4, seed=1)
    finally:
        with torch.no_grad():
            for p, s in zip(tiny_llada.parameters(), saved):
                p.copy_(s)
    assert nll == pytest.approx(math.log(V), rel=1e-5)
    a = diffusion_nll_per_token(tiny_llada, blocks, mc=4, seed=1)
    assert a == diffusion_nll_per_token(tiny_llada, blocks, mc=4, seed=1) and math.isfinite(a)
