"""The measured half of ``dlm check``: the built-in sentences, their masked forward passes and the
checks scored on them (rules: :mod:`dlm.check`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dlm.errors import DLMError

SENTENCES = (
    "This package provides a library for reading and writing compressed files.",
    "The program runs in the background and checks the system for updates.",
    "It includes a command line tool and a graphical user interface.",
    "This package contains the development files for the library.",
    "The server stores its data in a database and supports multiple users.",
    "Use this tool to convert text files between different character encodings.",
    "The library is written in C and has bindings for Python and Perl.",
    "This package contains the documentation in HTML format.",
    "The editor supports syntax highlighting for many programming languages.",
    "It can be used to monitor network traffic and display statistics.",
    "This module provides functions for parsing and generating XML documents.",
    "The daemon listens on a network port and answers requests from clients.",
)
LEVELS = (0.15, 0.5, 1.0)
COVERAGE = 2  # each token is masked about this often per level (15%: 14 copies of the 12 sentences)
FAIL_SHARE = 0.25  # top-1 under this share of the baseline fails
SHIFT_MARGIN = 0.5  # nats/token the other reading must win by before the registry's shift is doubted
MASK_WARN, MASK_FAIL = 0.1, 0.5  # share of masked positions whose top-1 prediction is the mask id


@dataclass
class CheckResult:
    name: str
    result: str  # pass | warn | fail | info | skip
    value: str
    notes: str
    numbers: dict = field(default_factory=dict)


@dataclass
class Batch:
    ids: torch.Tensor  # (B, L) token ids, left-padded
    attention_mask: torch.Tensor  # (B, L) 1 = real token
    scored: torch.Tensor  # (B, L) bool: real tokens after the conditioning first token


def encode_sentences(model) -> Batch:
    """``[BOS] + tokens + [EOS]`` per sentence (EOS / nothing stands in for a missing BOS)."""
    if model.tokenizer is None:
        raise DLMError(f"{model.path or 'this model'} has no tokenizer; dlm check needs one to encode its sentences")
    f = model.facts
    first = [f.bos_id] if f.bos_id is not None else list(f.eos_ids[:1])
    rows = [first + model.tokenizer(s, add_special_tokens=False)["input_ids"] + list(f.eos_ids[:1])
            for s in SENTENCES]
    top = max(max(r) for r in rows)
    if top >= f.vocab_size:
        raise DLMError(f"the tokenizer of {model.path or 'this model'} gives token id {top}, outside the model's "
                       f"vocabulary [0, {f.vocab_size})")
    L = max(map(len, rows))
    pad = f.pad_id if f.pad_id is not None else (f.eos_ids[0] if f.eos_ids else 0)
    ids = torch.tensor([[pad] * (L - len(r)) + r for r in rows])  # (B, L)
    real = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])  # (B, L)
    first_real = torch.zeros_like(real, dtype=torch.bool)
    first_real[torch.arange(len(rows)), L - torch.tensor(list(map(len, rows)))] = True
    return Batch(ids.to(model.device), real.to(model.device), (real.bool() & ~first_real).to(model.device))


def copies(level: float) -> int:
    """Masked copies of each sentence at ``level``: enough to mask every token about :data:`COVERAGE`
    times (one at 100%, where every copy is the same input)."""
    return 1 if level >= 1 else math.ceil(COVERAGE / level)


def mask_windows(batch: Batch, fraction: float, generator: torch.Generator) -> tuple[Batch, torch.Tensor]:
    """(``batch`` repeated :func:`copies` times, masked (B * copies, L) bool).

    Copy ``j`` of a sentence with ``n`` scored positions masks ``k = round(fraction * n)`` (at least
    1) of them: the cyclic window ``j * k .. j * k + k - 1`` of one seeded random order, so every
    token is masked equally often (within one) and the score does not hinge on which tokens the
    draw happened to mask.
    """
    c, B = copies(fraction), batch.ids.shape[0]
    big = Batch(batch.ids.repeat(c, 1), batch.attention_mask.repeat(c, 1), batch.scored.repeat(c, 1))
    masked = torch.zeros(big.ids.shape, dtype=torch.bool)  # row j * B + b: copy j of sentence b
    for b in range(B):
        where = batch.scored[b].nonzero().flatten().cpu()
        n = len(where)
        k = max(1, round(fraction * n))
        order = where[torch.randperm(n, generator=generator)]
        for j in range(c):
            masked[j * B + b, order[(j * k + torch.arange(k)) % n]] = True
    return big, masked.to(batch.ids.device)


def causal_bias(L: int, model) -> torch.Tensor:
    """(1, 1, L, L) additive: position i sees keys <= i."""
    upper = torch.ones(L, L, dtype=torch.bool, device=model.device).triu(1)
    return torch.zeros(1, 1, L, L, device=model.device).masked_fill(upper, torch.finfo(torch.float).min)


@torch.no_grad()
def forward(model, ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Aligned logits (B, L, V) in float32; causal attention for a causal LM."""
    bias = causal_bias(ids.shape[1], model) if model.facts.causal else None
    return model(ids, attention_mask=attention_mask, attention_bias=bias).logits.float()


def score(logits: torch.Tensor, targets: torch.Tensor, where: torch.Tensor) -> dict:
    """Positions, top-1 hits and summed NLL (nats) of ``logits`` (B, L, V) on ``targets`` (B, L) at ``where``."""
    lg, tg = logits[where], targets[where]  # (N, V), (N,)
    nll = F.cross_entropy(lg, tg, reduction="sum")
    return {"n": int(tg.numel()), "correct": int((lg.argmax(-1) == tg).sum()), "nll_sum": float(nll)}


def readings(logits: torch.Tensor, targets: torch.Tensor, where: torch.Tensor, shifted: bool) -> tuple[dict, dict]:
    """(the registry's reading, the other reading) on the positions both cover.

    ``logits`` are aligned (``logits[:, i]`` predicts token ``i``). For a shifted model the raw
    output at ``i`` sits at aligned ``i + 1``, so the unshifted reading pairs ``logits[:, 1:]`` with
    ``targets[:, :-1]``; for an unshifted model the shifted reading pairs ``logits[:, :-1]`` with
    ``targets[:, 1:]``. Neither covers both ends, so the comparison drops the first and last column.
    """
    inner = where.clone()
    inner[:, 0] = inner[:, -1] = False
    own = score(logits, targets, inner)
    if shifted:
        other = score(logits[:, 1:], targets[:, :-1], inner[:, :-1])
    else:
        other = score(logits[:, :-1], targets[:, 1:], inner[:, 1:])
    return own, other


def merge(parts: list[dict]) -> dict:
    return {k: sum(p[k] for p in parts) for k in ("n", "correct", "nll_sum")}


def rates(s: dict) -> tuple[float, float]:
    """(top-1 accuracy, NLL per token)."""
    return s["correct"] / max(s["n"], 1), s["nll_sum"] / max(s["n"], 1)


def baseline(batch: Batch) -> float:
    """Top-1 of a unigram model: the share of the most frequent token among the scored tokens."""
    counts = torch.bincount(batch.ids[batch.scored])
    return float(counts.max() / counts.sum())


def accuracy_check(name: str, s: dict, base: float, vocab: int, full_mask: bool) -> CheckResult:
    """``base``: top-1 of always guessing the most frequent token of the sentences."""
    acc, nll = rates(s)
    uniform, floor = math.log(vocab), base * FAIL_SHARE
    value = f"top-1 {acc:.1%}, NLL {nll:.2f}"
    if full_mask:
        rule = f"fail: top-1 < {floor:.1%} ({FAIL_SHARE:g} x baseline {base:.1%}); NLL not judged (no context)"
        result = "fail" if acc < floor else "pass"
    else:
        rule = (f"fail: top-1 < {floor:.1%} ({FAIL_SHARE:g} x baseline) or NLL >= {uniform:.2f} (uniform); "
                f"warn: top-1 < {base:.1%} (baseline)")
        result = "fail" if acc < floor or nll >= uniform else "warn" if acc < base else "pass"
    numbers = {"top1": round(acc, 4), "nll": round(nll, 4), "baseline_top1": round(base, 4),
               "uniform_nll": round(uniform, 4), "positions": s["n"]}
    return CheckResult(name, result, value, f"{rule}; {s['n']} positions", numbers)


def shift_check(own: dict, other: dict, shifted: bool) -> CheckResult:
    (own_acc, own_nll), (other_acc, other_nll) = rates(own), rates(other)
    names = ("shifted", "unshifted") if shifted else ("unshifted", "shifted")
    value = (f"{names[0]} (registry) NLL {own_nll:.2f} top-1 {own_acc:.1%}; "
             f"{names[1]} NLL {other_nll:.2f} top-1 {other_acc:.1%}")
    result = "warn" if other_nll < own_nll - SHIFT_MARGIN else "pass"
    notes = f"warn: {names[1]} NLL lower by > {SHIFT_MARGIN} (the registry's shift is probably wrong)"
    numbers = {"registry": names[0], "registry_nll": round(own_nll, 4), "registry_top1": round(own_acc, 4),
               "other_nll": round(other_nll, 4), "other_top1": round(other_acc, 4)}
    return CheckResult("shift", result, value, notes, numbers)


def mask_prediction_check(share: float, positions: int) -> CheckResult:
    result = "fail" if share > MASK_FAIL else "warn" if share > MASK_WARN else "pass"
    return CheckResult("mask predictions", result, f"{share:.1%} of masked positions",
                       f"the mask id as top-1; warn > {MASK_WARN:.0%}, fail > {MASK_FAIL:.0%} "
                       f"({positions} positions)", {"share": round(share, 4)})


def padding_check(model, ids: torch.Tensor, batch: Batch, logits: torch.Tensor) -> CheckResult:
    """The shortest row of ``ids`` (B, L) alone vs its left-padded row of ``logits`` (B, L, V)."""
    lengths = batch.attention_mask.sum(1)  # (B,)
    row = int(lengths.argmin())
    n = int(lengths[row])
    alone = forward(model, ids[row:row + 1, -n:], None)[0]  # (n, V)
    padded = logits[row, -n:]  # (n, V)
    skip = 1 if model.facts.shifted else 0  # a shifted model's first position repeats the pad's output
    diff = float((alone[skip:] - padded[skip:]).abs().max())
    rel = 1e-4 if model.dtype == torch.float32 else 3e-2
    tol = rel * max(1.0, float(alone.abs().max()))
    result = "pass" if diff <= tol else "fail"
    return CheckResult("padding", result, f"max |diff| {diff:.2g}",
                       f"fail > {tol:.2g}: {n} tokens alone vs left-padded by {ids.shape[1] - n}",
                       {"max_abs_diff": diff, "tolerance": tol})
