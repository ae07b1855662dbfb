"""The ``isd`` sampler (I-DLM introspective strided decoding) on causal LMs: greedy == ``ar``,
padding, EOS mid-round, NFE / tokens-per-forward accounting, seeds, the exact mode's distribution."""

from __future__ import annotations

import json
import re
from contextlib import contextmanager

import pytest
import torch

import dlm
from dlm.cli import main
from dlm.errors import DLMError
from dlm.models.diffusion_lm import DiffusionLM
from dlm.models.registry import resolve_facts
from dlm.sampling.batching import left_pad
from dlm.sampling.isd import filtered_logits
from test_autoregressive import causal_lm  # noqa: F401 - the tiny random LLaMA (vocab 8192) fixture

RANDOM_ROWS = [[0, 4, 100, 200, 300, 6, 5], [0, 4, 999, 6, 5], [0, 4, 7, 8, 9, 10, 11, 12, 6, 5]]
TEXTS = ["GNU grep searches files for lines that match a pattern.", "Python 3 bindings for YAML",
         "This package provides the documentation of the library, with examples and a tutorial."]


@pytest.fixture(scope="module")
def shipped():
    return {name: dlm.load(name) for name in ("tiny-ar-instruct", "tiny-ar")}


def tiny_vocab_lm(vocab: int = 8, seed: int = 0, mask: bool = True, objective: str = "causal") -> DiffusionLM:
    """A random 2-layer LLaMA over ``vocab`` tokens (mask = last id, EOS = the one before)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    hf = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                     tie_word_embeddings=False, bos_token_id=0, eos_token_id=vocab - 2, pad_token_id=vocab - 2)
    net = LlamaForCausalLM._from_config(hf, attn_implementation="sdpa")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g))  # spread-out next-token distributions
    cfg = hf.to_dict()
    cfg.update(dlm_objective=objective, **({"mask_token_id": vocab - 1} if mask else {}))
    return DiffusionLM(net, resolve_facts("llama", cfg, vocab), cfg).eval()


@contextmanager
def scripted(model, target):
    """Replace the logits of ``model.net``: ``target(position_ids, input_ids)`` (R, L) -> (R, L) token
    ids (or -1 = keep the model's own logits) that each slot predicts, as a one-hot of height 50."""
    seen = {}

    def pre(module, args, kwargs):
        seen.update(ids=kwargs["input_ids"], pos=kwargs["position_ids"])

    def post(module, args, out):
        L = out.shape[1]  # the prefill keeps only its last position
        want = target(seen["pos"][:, -L:], seen["ids"][:, -L:])
        scripted_rows = want >= 0
        onehot = torch.nn.functional.one_hot(want.clamp_min(0), out.shape[-1]).to(out.dtype) * 50.0
        return torch.where(scripted_rows[..., None], onehot, out)

    hooks = [model.net.register_forward_pre_hook(pre, with_kwargs=True), model.net.lm_head.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def greedy_pair(model, rows, **kw):
    ids, mask = left_pad(model, rows)
    ar = dlm.generate(model, ids, mask, sampler="ar", return_dict=True, **kw)
    isd = {}
    for n in (2, 3, 4):
        isd[n] = dlm.generate(model, ids, mask, sampler="isd", stride=n, return_dict=True, **kw)
    return ids, ar, isd


# -- temperature 0: the greedy AR output, token for token ---------------------------------------
@pytest.mark.parametrize("name", ["tiny-ar-instruct", "tiny-ar"])
def test_greedy_equals_ar_on_shipped_models_batched_and_alone(shipped, name):
    model = shipped[name]
    rows = [model.encode_prompt(t) for t in TEXTS]
    ids, ar, isd = greedy_pair(model, rows, gen_length=24)
    assert len({len(r) for r in rows}) == 3 and ids.shape[1] == max(map(len, rows))
    for n, out in isd.items():
        assert torch.equal(out.sequences, ar.sequences), n
        assert out.sampler == "isd" and out.options["stride"] == n and out.nfe <= ar.nfe
        for i, row in enumerate(rows):  # each row alone (batch 1, no padding)
            alone = dlm.generate(model, torch.tensor([row]), sampler="isd", stride=n, gen_length=24)
            assert torch.equal(alone[0, len(row):], out.generated[i])


@pytest.mark.parametrize("stop_at_eos", [True, False])
def test_greedy_equals_ar_on_random_llama(causal_lm, stop_at_eos):  # noqa: F811
    ids, ar, isd = greedy_pair(causal_lm, RANDOM_ROWS, gen_length=20, stop_at_eos=stop_at_eos)
    assert len(set(ar.generated[0].tolist())) > 3  # varied tokens, not one repeated
    for n, out in isd.items():
        assert torch.equal(out.sequences, ar.sequences), n
        for i, row in enumerate(RANDOM_ROWS):
            alone = dlm.generate(causal_lm, torch.tensor([row]), sampler="isd", stride=n, gen_length=20,
                                 stop_at_eos=stop_at_eos)
            assert torch.equal(alone[0, len(row):], out.generated[i])


def test_good_drafts_rows_commit_different_counts_cache_stays_exact(causal_lm):  # noqa: F811
    """Mask slots replaced by an oracle (the greedy continuation; wrong in two places of row 0):
    drafts are accepted, rows commit 1..N slots per forward, the clean logits (which read the
    re-packed KV cache) still give the ar output exactly, in fewer forwards."""
    G, mask = 24, causal_lm.facts.mask_id
    rows = [[0, 4, 100, 200], [0, 4] + list(range(300, 340))]  # real positions 4..31 and 42..: disjoint
    ids, pad = left_pad(causal_lm, rows)
    ar = dlm.generate(causal_lm, ids, pad, sampler="ar", gen_length=G, stop_at_eos=False)
    oracle = torch.full((128,), -1)
    for i, row in enumerate(rows):
        oracle[len(row):len(row) + G] = ar[i, ids.shape[1]:]
    for j in (5, 6, 11, 12):  # wrong drafts in row 0 (two in a row: some slot drafts them, whatever N)
        oracle[len(rows[0]) + j] = (oracle[len(rows[0]) + j] + 1) % 8000

    def target(pos, inp):  # a mask slot at position k drafts the token at k + 1
        return torch.where(inp == mask, oracle[(pos + 1).clamp_max(127)], torch.full_like(pos, -1))

    with scripted(causal_lm, target):
        for n in (2, 3, 4):
            out = dlm.generate(causal_lm, ids, pad, sampler="isd", stride=n, gen_length=G, stop_at_eos=False,
                               return_dict=True)
            assert torch.equal(out.sequences, ar), n
            s = out.stats
            assert s["accepted"] < s["proposed"] and s["acceptance_rate"] > 0.6
            assert out.nfe < G - 4 and s["tokens"] == [G, G] and s["forwards"][0] > s["forwards"][1]


# -- EOS mid-round and the NFE / tokens-per-forward accounting, counted by hand ----------------
EOS = 1


def sequence_model(causal_lm, eos_at: int | None = None, bad_drafts: bool = False):  # noqa: F811
    """Every slot at position k predicts 10 + k + 1 (EOS at position ``eos_at``); mask slots predict
    the same (drafts always right) or token 9 (always wrong)."""
    table = torch.arange(10, 10 + 128)
    if eos_at is not None:
        table[eos_at] = EOS
    mask = causal_lm.facts.mask_id

    def target(pos, inp):
        want = table[pos + 1]
        return torch.where(inp == mask, torch.full_like(want, 9), want) if bad_drafts else want
    return scripted(causal_lm, target)


def test_eos_mid_round_ends_the_row_and_counts_by_hand(causal_lm):  # noqa: F811
    # N = 3, prompt of 3 tokens, EOS at position 8 = generated index 5:
    # prefill emits g0; cold round g1 (commits g0); verify [g1, g2, g3 | M M]: all accepted, emits
    # g2 g3 g4; verify [g4, g5, g6 | M M]: emits g5 = EOS and ends the row. 4 forwards, 6 tokens.
    with sequence_model(causal_lm, eos_at=8):
        out = dlm.generate(causal_lm, torch.tensor([[0, 4, 5]]), sampler="isd", stride=3, gen_length=8,
                           return_dict=True, output_history=True)
        ar = dlm.generate(causal_lm, torch.tensor([[0, 4, 5]]), sampler="ar", gen_length=8, return_dict=True)
    assert out.generated[0].tolist() == [13, 14, 15, 16, 17, EOS, EOS, EOS] == ar.generated[0].tolist()
    assert out.nfe == 4 and ar.nfe == 6
    s = out.stats
    assert (s["tokens"], s["forwards"], s["cold_rounds"], s["verify_rounds"]) == ([6], [4], 1, 2)
    # drafts judged: g2 g3 (accepted), then g5 = EOS (accepted); g6, accepted but after EOS, is not counted
    assert (s["accepted"], s["proposed"], s["tokens_per_forward"]) == (3, 3, 1.5)
    frames = out.history[:, 0, 3:]
    assert frames.shape[0] == 5 and [int((f != causal_lm.facts.mask_id).sum()) for f in frames] == [0, 1, 2, 5, 8]


def test_eos_rows_of_a_padded_batch_end_in_different_rounds(causal_lm):  # noqa: F811
    rows = [[0, 4, 5], [0, 4, 5, 6, 7]]  # EOS at position 8: generated index 5 and 3
    ids, pad = left_pad(causal_lm, rows)
    with sequence_model(causal_lm, eos_at=8):
        out = dlm.generate(causal_lm, ids, pad, sampler="isd", stride=3, gen_length=8, return_dict=True)
        ar = dlm.generate(causal_lm, ids, pad, sampler="ar", gen_length=8)
    assert torch.equal(out.sequences, ar)
    assert out.generated[1].tolist() == [15, 16, 17, EOS, EOS, EOS, EOS, EOS]
    assert out.stats["tokens"] == [6, 4] and out.stats["forwards"] == [4, 3] and out.nfe == 4
    assert out.stats["tokens_per_forward"] == 10 / 7


def test_length_limit_mid_round_and_stop_at_eos_false(causal_lm):  # noqa: F811
    # no stop: g0 | g1 | g2 g3 g4 | g5 g6 g7 | g8 (the rest of that round dropped): 5 forwards
    with sequence_model(causal_lm, eos_at=8):
        out = dlm.generate(causal_lm, torch.tensor([[0, 4, 5]]), sampler="isd", stride=3, gen_length=9,
                           stop_at_eos=False, return_dict=True)
    assert out.generated[0].tolist() == [13, 14, 15, 16, 17, EOS, 19, 20, 21]
    # drafts judged: g2 g3, g5 g6, then g8 only (g9 lies past gen_length)
    assert out.nfe == 5 and out.stats["tokens_per_forward"] == 9 / 5 and out.stats["proposed"] == 5


def test_every_draft_rejected_is_one_token_per_forward(causal_lm):  # noqa: F811
    # prefill g0 | cold g1 | verify: reject s0, emit c = g2 | cold g3 | verify g4 | cold g5
    with sequence_model(causal_lm, bad_drafts=True):
        out = dlm.generate(causal_lm, torch.tensor([[0, 4, 5]]), sampler="isd", stride=4, gen_length=6,
                           return_dict=True)
    assert out.generated[0].tolist() == [13, 14, 15, 16, 17, 18] and out.nfe == 6
    s = out.stats
    assert (s["cold_rounds"], s["verify_rounds"], s["accepted"], s["proposed"]) == (3, 2, 0, 6)
    assert s["tokens_per_forward"] == 1.0 and s["acceptance_rate"] == 0.0


def test_gen_length_one_is_the_prefill_alone(causal_lm):  # noqa: F811
    out = dlm.generate(causal_lm, torch.tensor([RANDOM_ROWS[0]]), sampler="isd", gen_length=1, return_dict=True)
    ar = dlm.generate(causal_lm, torch.tensor([RANDOM_ROWS[0]]), sampler="ar", gen_length=1, return_dict=True)
    assert out.nfe == ar.nfe == 1 and torch.equal(out.sequences, ar.sequences)


# -- temperature > 0 ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["reference", "exact"])
def test_sampling_reproducible_and_rows_independent_of_batch(causal_lm, mode):  # noqa: F811
    kw = dict(sampler="isd", stride=3, gen_length=12, temperature=0.9, stop_at_eos=False, mode=mode)
    ids, pad = left_pad(causal_lm, RANDOM_ROWS)
    a = dlm.generate(causal_lm, ids, pad, seed=5, **kw)
    assert torch.equal(a, dlm.generate(causal_lm, ids, pad, seed=5, **kw))
    assert not torch.equal(a, dlm.generate(causal_lm, ids, pad, seed=6, **kw))
    seeds = [101, 7, 55]
    batched = dlm.generate(causal_lm, ids, pad, seed=seeds, **kw)[:, ids.shape[1]:]
    for i, row in enumerate(RANDOM_ROWS):
        alone = dlm.generate(causal_lm, torch.tensor([row]), seed=[seeds[i]], **kw)
        assert torch.equal(alone[0, len(row):], batched[i])


def ar_marginals(model, prompt, G, top_k, top_p) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact (G, V) marginals and (V * V) joint of the last two tokens of AR sampling at T = 1 with
    top-k / top-p (every prefix enumerated)."""
    seqs, margins = {(): 1.0}, torch.zeros(G, model.facts.vocab_size, dtype=torch.float64)
    with torch.no_grad():
        for j in range(G):
            keys = list(seqs)
            logits = model.net(input_ids=torch.tensor([prompt + list(k) for k in keys])).logits[:, -1].double()
            p = filtered_logits(logits, 1.0, top_k, top_p).softmax(-1)  # (prefixes, V)
            margins[j] = (torch.tensor([seqs[k] for k in keys], dtype=torch.float64)[:, None] * p).sum(0)
            seqs = {k + (t,): seqs[k] * float(p[i, t])
                    for i, k in enumerate(keys) for t in p[i].nonzero()[:, 0].tolist()}
    V = model.facts.vocab_size
    joint = torch.zeros(V * V, dtype=torch.float64)
    for k, w in seqs.items():
        joint[k[-2] * V + k[-1]] += w
    return margins, joint


def chi_square(samples: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson's statistic over the cells expecting >= 5 samples, and its degrees of freedom."""
    n = samples.numel()
    expected = probs * n
    observed = torch.bincount(samples, minlength=probs.numel()).double()
    keep = expected >= 5
    return float(((observed - expected) ** 2 / expected)[keep].sum()), int(keep.sum()) - 1


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (4, 0.9)])
def test_exact_mode_samples_the_ar_distribution(top_k, top_p):
    """Drafts (tokens 2 and 3 with N = 3) go through speculative acceptance: in exact mode their
    marginals and joint are AR sampling's; the reference's argmax drafts scored with a soft q are not."""
    model, prompt, G, n = tiny_vocab_lm(), [0, 1, 2], 4, 3000
    want, joint = ar_marginals(model, prompt, G, top_k, top_p)  # (G, V), (V * V)
    kw = dict(sampler="isd", stride=3, gen_length=G, temperature=1.0, top_k=top_k, top_p=top_p, stop_at_eos=False,
              seed=0, return_dict=True)
    out = dlm.generate(model, torch.tensor([prompt] * n), mode="exact", **kw)
    assert 0.5 < out.stats["acceptance_rate"] < 1  # both accepted and rejected drafts
    for j in range(G):
        stat, df = chi_square(out.generated[:, j], want[j])
        assert stat < df + 6 * (2 * df) ** 0.5, (j, stat, df)  # about p < 1e-4
    stat, df = chi_square(out.generated[:, 2] * 8 + out.generated[:, 3], joint)
    assert stat < df + 6 * (2 * df) ** 0.5, (stat, df)
    if top_k == 0:
        ref = dlm.generate(model, torch.tensor([prompt] * n), mode="reference", **kw)
        worst = max(chi_square(ref.generated[:, j], want[j])[0] for j in (2, 3))
        assert worst > 100  # the test tells a wrong acceptance rule


# -- options, model kinds, CLI, history and trace ----------------------------------------------
@pytest.mark.parametrize("options, message", [
    (dict(stride=1), "stride must be >= 2"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(top_k=-1), "top_k must be >= 0"),
    (dict(mode="fast"), "mode must be one of reference, exact"),
    (dict(temperature=-0.5), "temperature must be >= 0"),
    (dict(gen_length=0), "gen_length must be >= 1"),
    (dict(stride=2.5), "'stride' must be an integer"),
    (dict(mask_id=10 ** 6), "outside the vocabulary"),
])
def test_bad_options_are_refused(causal_lm, options, message):  # noqa: F811
    with pytest.raises(DLMError, match=message):
        dlm.generate(causal_lm, torch.tensor([[0, 4, 5]]), sampler="isd", **options)


def test_model_kinds(tiny_llada):
    with pytest.raises(DLMError, match="no mask token id"):
        dlm.generate(tiny_vocab_lm(mask=False), torch.tensor([[0, 1]]), sampler="isd")
    with pytest.raises(DLMError, match="causal LMs only"):
        dlm.generate(tiny_llada, torch.tensor([[1, 2]]), sampler="isd")
    idlm = tiny_vocab_lm(objective="idlm")  # an introspective DLM decodes with isd by default
    out = dlm.generate(idlm, torch.tensor([[0, 1, 2]]), gen_length=6, stop_at_eos=False, return_dict=True)
    assert out.sampler == "isd" and out.stats["tokens"] == [6]
    assert torch.equal(out.sequences, dlm.generate(idlm, torch.tensor([[0, 1, 2]]), sampler="ar", gen_length=6,
                                                    stop_at_eos=False))


def test_generate_return_dict_history(shipped):
    model = shipped["tiny-ar-instruct"]
    rows = [model.encode_prompt(t) for t in TEXTS[:2]]
    ids, pad = left_pad(model, rows)
    out = dlm.generate(model, ids, pad, sampler="isd", stride=3, gen_length=16, return_dict=True,
                       output_history=True)
    G, P, mask = 16, ids.shape[1], model.facts.mask_id
    assert out.history.shape == (out.nfe + 1, 2, P + G) and torch.equal(out.history[-1], out.sequences)
    filled = (out.history[:, :, P:] != mask).sum(-1)  # (S + 1, B): the canvas fills left to right
    assert filled[0].tolist() == [0, 0] and bool((filled[1:] >= filled[:-1]).all()) and bool((filled[-1] == G).all())
    for frame in out.history[:, :, P:]:
        for row in frame:  # generated tokens, then masks: never a hole
            k = int((row != mask).sum())
            assert bool((row[:k] != mask).all()) and bool((row[k:] == mask).all())
    s = out.stats
    assert set(s) >= {"tokens_per_forward", "accepted", "proposed", "acceptance_rate", "tokens", "forwards"}
    assert max(s["forwards"]) == out.nfe and s["tokens_per_forward"] >= 1.0


def test_cli_generate_isd_json(capsys):
    argv = ["generate", "--model", "tiny-ar-instruct", "--prompt", TEXTS[0], "--prompt", TEXTS[1],
            "--gen-length", "12", "--json"]
    assert main(argv + ["--sampler", "isd", "-o", "stride=3", "-o", "mode=exact"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["sampler"] == "isd" and rec["options"]["stride"] == 3 and rec["options"]["mode"] == "exact"
    assert rec["stats"]["tokens_per_forward"] >= 1.0 and "acceptance_rate" in rec["stats"]
    assert main(argv + ["--sampler", "ar"]) == 0
    ar = json.loads(capsys.readouterr().out)
    assert [r["ids"] for r in rec["results"]] == [r["ids"] for r in ar["results"]] and set(ar["stats"]) == {"forwards"}
    assert main(["generate", "--model", "tiny-ar-instruct", "--prompt", "x", "--sampler", "isd", "-o", "top_p=2"]) == 2
    assert "top_p must be in (0, 1]" in capsys.readouterr().err


def test_trace_isd(tmp_path):
    out = tmp_path / "t.html"
    assert main(["trace", "--model", "tiny-ar-instruct", "--prompt", TEXTS[0], "--out", str(out), "--sampler", "isd",
                 "--gen-length", "8", "-o", "stride=3", "-o", "stop_at_eos=false"]) == 0
    page = out.read_text()
    steps = len(re.findall(r"<h3>step \d+</h3>", page))
    assert 2 <= steps <= 9 and "sampler isd" in page
    assert page.count('class="c new"') == 8  # every position is written exactly once
