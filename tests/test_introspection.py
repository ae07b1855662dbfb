"""The introspective acceptance rate (I-DLM): q recorded by the samplers, p re-scored by
dlm.acceptance_rate, and dlm eval --introspection."""

from __future__ import annotations

import json

import pytest
import torch

import dlm
from dlm.cli import main
from dlm.errors import DLMError
from dlm.sampling.output import token_probability
from dlm.sampling.batching import left_pad
from test_autoregressive import causal_lm  # noqa: F401 - the tiny random LLaMA (vocab 8192) fixture
from test_isd import tiny_vocab_lm

TEXTS = ["GNU grep searches files for lines that match a pattern.",
         "Python 3 bindings for YAML, a human-readable data serialization format, with a fast C extension."]
ROUNDING = 1e-5  # a KV-cached decode and a one-pass re-scoring round differently (about 1e-6 on CPU)


@pytest.fixture(scope="module")
def shipped():
    return {name: dlm.load(name) for name in ("tiny-ar-instruct", "tiny-a2d-instruct")}


def batch(model, texts=TEXTS):
    return left_pad(model, [model.encode_prompt(t) for t in texts])


# -- causal models: q = p -------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{}, {"temperature": 0.8, "seed": [1, 2]}])
def test_ar_on_a_causal_model_has_rate_one(shipped, kw):
    model = shipped["tiny-ar-instruct"]
    ids, mask = batch(model)
    out = dlm.generate(model, ids, mask, sampler="ar", gen_length=16, return_dict=True, output_token_probs=True, **kw)
    q = out.token_probs
    assert q.shape == out.generated.shape and q.dtype == torch.float32
    a = dlm.acceptance_rate(model, out, attention_mask=mask)
    assert a.forwards == 1 and a.mean == pytest.approx(1.0, abs=ROUNDING)
    assert all(r == pytest.approx(1.0, abs=ROUNDING) for r in a.rates)
    scored = ~torch.isnan(a.p)
    assert torch.allclose(a.p[scored], q[scored], rtol=ROUNDING, atol=0)  # p = q token for token
    for row, n in enumerate(a.tokens):  # scored through the first stop token; the EOS fill was not drawn
        gen = out.generated[row].tolist()
        stop = next((i for i, t in enumerate(gen) if t in model.facts.stop_ids), None)
        assert n == (len(gen) if stop is None else stop + 1)
        assert not torch.isnan(q[row, :n]).any() and bool(torch.isnan(q[row, n:]).all())
    # the same q as p (no KV cache in between): exactly 1
    exact = dlm.acceptance_rate(model, out.sequences, out.prompt_length, torch.nan_to_num(a.p, 0.5), mask,
                                temperature=kw.get("temperature", 0.0))
    assert exact.rates == [1.0, 1.0] and exact.mean == 1.0 and exact.token_mean == 1.0


def test_greedy_isd_on_a_causal_model_has_rate_one(shipped):
    model = shipped["tiny-ar-instruct"]
    ids, mask = batch(model)
    ar = dlm.generate(model, ids, mask, sampler="ar", gen_length=16, return_dict=True, output_token_probs=True)
    for stride in (2, 4):
        out = dlm.generate(model, ids, mask, sampler="isd", stride=stride, gen_length=16, return_dict=True, output_token_probs=True)
        assert torch.equal(out.sequences, ar.sequences)  # recording q changes no token
        assert torch.allclose(torch.nan_to_num(out.token_probs), torch.nan_to_num(ar.token_probs), rtol=ROUNDING)
        a = dlm.acceptance_rate(model, out, attention_mask=mask)
        assert a.mean == pytest.approx(1.0, abs=ROUNDING)


def test_sampled_isd_rate_is_a_probability(causal_lm):  # noqa: F811
    ids, mask = left_pad(causal_lm, [[0, 4, 100, 200, 300, 6, 5], [0, 4, 999, 6, 5]])
    for mode in ("reference", "exact"):
        out = dlm.generate(causal_lm, ids, mask, sampler="isd", temperature=1.0, mode=mode, gen_length=12,
                           stop_at_eos=False, seed=[3, 4], return_dict=True, output_token_probs=True)
        assert not torch.isnan(out.token_probs).any() and bool(((out.token_probs > 0) & (out.token_probs <= 1)).all())
        a = dlm.acceptance_rate(causal_lm, out, attention_mask=mask)
        assert all(0 < r <= 1 for r in a.rates) and a.tokens == [12, 12]


# -- a hand-checked rate --------------------------------------------------------------------------
def test_hand_checked_rate_from_known_p_and_q():
    model = tiny_vocab_lm(vocab=8, seed=1)  # EOS = 6
    seq = torch.tensor([[0, 3, 1, 2, 4, 6, 5, 5]])  # prompt [0, 3]; generated 1 2 4 EOS, then fill
    P = 2
    with torch.no_grad():
        logits = model.net(input_ids=seq).logits[0].double()  # (8, V): position i predicts i + 1
    for T, scale in ((0.0, 1.0), (2.0, 2.0)):
        p = (logits[P - 1:-1] / scale).softmax(-1).gather(1, seq[0, P:, None])[:, 0]  # (6,)
        # q: p / 2 (ratio 2 -> 1), p (1), 2 p (0.5), 4 p (0.25); after the EOS: not drawn
        q = torch.tensor([[p[0] / 2, p[1], 2 * p[2], 4 * p[3], float("nan"), float("nan")]])
        a = dlm.acceptance_rate(model, seq, P, q, temperature=T)
        assert a.tokens == [4]
        assert a.rates[0] == pytest.approx((1 + 1 + 0.5 + 0.25) / 4, abs=1e-6)
        assert a.ratios[0, :4].tolist() == pytest.approx([1, 1, 0.5, 0.25], abs=1e-6)
        assert torch.isnan(a.ratios[0, 4:]).all() and torch.isnan(a.p[0, 4:]).all()
        assert a.p[0, :4].double().tolist() == pytest.approx(p[:4].tolist(), rel=1e-5)


def test_two_rows_mean_and_token_mean():
    model = tiny_vocab_lm(vocab=8, seed=1)
    seq = torch.tensor([[0, 3, 1, 2, 4], [0, 3, 6, 5, 5]])  # row 1 stops at once: one token scored
    a0 = dlm.acceptance_rate(model, seq, 2, torch.ones(2, 3))
    p = a0.p
    q = torch.tensor([[p[0, 0] / 4, p[0, 1] / 2, p[0, 2]], [2 * p[1, 0], float("nan"), float("nan")]])
    a = dlm.acceptance_rate(model, seq, 2, q)
    assert a.tokens == [3, 1] and a.rates == pytest.approx([1.0, 0.5], abs=1e-6)
    assert a.mean == pytest.approx(0.75, abs=1e-6) and a.token_mean == pytest.approx(3.5 / 4, abs=1e-6)


def test_bidirectional_p_is_the_masked_left_context(tiny_llada):
    """For a diffusion model p_k is the prediction at k with every position >= k masked."""
    seq = torch.tensor([[5, 9, 12, 7, 30, 2, 62, 62]])  # prompt 3, generated 5 (EOS 62 at index 3)
    P, mask_id = 3, tiny_llada.facts.mask_id
    want = []
    for k in range(P, P + 4):
        x = seq.clone()
        x[:, k:] = mask_id
        with torch.no_grad():
            want.append(float(tiny_llada(x).logits[0, k].double().softmax(-1)[seq[0, k]]))
    a = dlm.acceptance_rate(tiny_llada, seq, P, torch.full((1, 5), 0.5), batch_size=3)
    assert a.tokens == [4] and a.forwards == 2  # 4 masked copies, 3 per pass
    assert a.p[0, :4].double().tolist() == pytest.approx(want, rel=1e-5)
    assert a.rates[0] == pytest.approx(sum(min(1.0, w / 0.5) for w in want) / 4, abs=1e-6)


# -- llada: q recorded at commit time, tokens unchanged -------------------------------------------
@pytest.mark.parametrize("kw", [{}, {"temperature": 0.7, "seed": 5}, {"confidence_eos_eot_inf": True}])
def test_llada_q_is_the_commit_step_softmax(shipped, kw):
    model = shipped["tiny-a2d-instruct"]
    ids, mask = batch(model)
    out = dlm.generate(model, ids, mask, sampler="llada", gen_length=16, steps=8, return_dict=True, output_token_probs=True,
                       output_history=True, **kw)
    q, P, T = out.token_probs, out.prompt_length, kw.get("temperature", 0.0)
    assert not torch.isnan(q).any()  # llada draws every position, the EOS fill included
    am = torch.cat([mask, mask.new_ones(2, 16)], 1)
    for s in range(out.history.shape[0] - 1):  # q = softmax(l / T)[x] of the step that committed x
        before, after = out.history[s], out.history[s + 1]
        committed = (before == model.facts.mask_id) & (after != model.facts.mask_id)
        with torch.no_grad():
            logits = model(before, attention_mask=am).logits
        want = token_probability(logits, after, T)[committed]
        assert torch.allclose(q[committed[:, P:]].double(), want, rtol=1e-5), s
    a = dlm.acceptance_rate(model, out, attention_mask=mask)
    assert all(0 < r <= 1 for r in a.rates) and 0 < a.mean < 1
    assert a.forwards == -(-sum(a.tokens) // 16)


@pytest.mark.parametrize("kw", [{}, {"temperature": 0.5}, {"cfg_scale": 1.5}])
def test_llada_tokens_equal_the_plain_loop(tiny_llada, kw):
    """Recording q draws nothing and edits no logits: the tokens are those of LLaDA's plain loop
    (benchmarks/naive_loop.py, itself checked against the reference in test_reference_parity)."""
    from naive_loop import naive_generate

    prompt = torch.randint(0, 60, (2, 6), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(7)
    out = dlm.generate(tiny_llada, prompt, sampler="llada", gen_length=8, steps=8, block_length=4,
                       return_dict=True, output_token_probs=True, **kw)
    torch.manual_seed(7)
    want = naive_generate(tiny_llada, prompt, gen_length=8, steps=8, block_length=4, **kw)
    assert torch.equal(out.sequences, want) and not torch.isnan(out.token_probs).any()


def test_padded_batch_equals_rows(shipped):
    for name, kw in (("tiny-a2d-instruct", {"sampler": "llada", "steps": 8}), ("tiny-ar-instruct", {"sampler": "ar"})):
        model = shipped[name]
        ids, mask = batch(model)
        assert mask is not None and bool((mask == 0).any())
        out = dlm.generate(model, ids, mask, gen_length=16, seed=[0, 1], return_dict=True, output_token_probs=True, **kw)
        a = dlm.acceptance_rate(model, out, attention_mask=mask, batch_size=5)
        for row, text in enumerate(TEXTS):
            alone_ids = torch.tensor([model.encode_prompt(text)])
            alone = dlm.generate(model, alone_ids, gen_length=16, seed=[row], return_dict=True, output_token_probs=True, **kw)
            assert torch.equal(alone.generated[0], out.generated[row]), name
            r = dlm.acceptance_rate(model, alone)
            assert r.tokens[0] == a.tokens[row] and r.rates[0] == pytest.approx(a.rates[row], abs=ROUNDING), name


def test_invalid_input_is_refused(shipped):
    model = shipped["tiny-ar-instruct"]
    ids, mask = batch(model)
    out = dlm.generate(model, ids, mask, gen_length=4, return_dict=True, output_token_probs=True)
    with pytest.raises(DLMError, match="GenerationOutput alone"):
        dlm.acceptance_rate(model, out, 3, out.token_probs)
    with pytest.raises(DLMError, match="token_probs must have shape"):
        dlm.acceptance_rate(model, out.sequences, out.prompt_length, out.token_probs[:, :2], mask)
    with pytest.raises(DLMError, match="attention_mask must have shape"):
        dlm.acceptance_rate(model, out, attention_mask=mask[:, 1:])
    plain = dlm.generate(model, ids, mask, gen_length=4, return_dict=True)  # q is recorded only when asked for
    assert plain.token_probs is None and torch.equal(plain.sequences, out.sequences)
    with pytest.raises(DLMError, match="output_token_probs=True"):
        dlm.acceptance_rate(model, plain)
    missing = out.token_probs.clone()
    missing[0, 0] = float("nan")
    with pytest.raises(DLMError, match="no q for generated position 0 of row 0"):
        dlm.acceptance_rate(model, out.sequences, out.prompt_length, missing, mask)


# -- dlm eval --introspection --------------------------------------------------------------------
def read(out):
    summary = json.loads(next(out.glob("*.summary.json")).read_text())
    samples = [json.loads(line) for line in next(out.glob("*.samples.jsonl")).read_text().splitlines()]
    return summary, samples


def test_eval_flag_writes_rate_and_mean(tmp_path, capsys):
    out = tmp_path / "r"
    args = ["eval", "--model", "tiny-a2d-instruct", "--task", "debian", "--nfe", "4", "--limit", "3",
            "-o", "gen_length=8", "-o", "block_length=8", "--out", str(out)]
    assert main([*args, "--introspection"]) == 0
    assert "acceptance_rate" in capsys.readouterr().out  # the printed table
    summary, samples = read(out)
    assert len(samples) == 3 and all(0 < s["acceptance_rate"] <= 1 for s in samples)
    assert all(s["introspection_seconds"] >= 0 for s in samples)
    mean = sum(s["acceptance_rate"] for s in samples) / 3
    assert summary["results"][0]["acceptance_rate"] == pytest.approx(mean)
    assert "min(1, p/q)" in summary["settings"]["introspection"]
    assert main([*args, "--introspection"]) == 0  # the same command resumes (nothing to do)
    capsys.readouterr()
    assert main(args) == 2 and "introspection" in capsys.readouterr().err  # other settings: refused
    # an AR model decoded by ar endorses its own tokens; dlm report lists the column
    assert main(["eval", "--model", "tiny-ar-instruct", "--task", "debian", "--limit", "3", "-o", "gen_length=8",
                 "--out", str(out), "--introspection"]) == 0
    ar = json.loads(next(out.glob("tiny-ar-instruct*.summary.json")).read_text())
    assert ar["results"][0]["acceptance_rate"] == pytest.approx(1.0, abs=ROUNDING)
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "acceptance_rate" in md.splitlines()[[i for i, line in enumerate(md.splitlines()) if
                                                 line.startswith("| run |")][0]]


def test_eval_flag_refused_where_nothing_is_generated(tmp_path, capsys):
    assert main(["eval", "--model", "tiny-a2d", "--task", "repair", "--data", str(tmp_path / "x.txt"),
                 "--introspection", "--out", str(tmp_path)]) == 2
    assert "applies to generation tasks" in capsys.readouterr().err
    assert main(["eval", "--model", "tiny-a2d-instruct", "--task", "debian", "--baseline", "lead-8",
                 "--introspection", "--out", str(tmp_path)]) == 2
    assert "generates nothing" in capsys.readouterr().err
