"""What the revision samplers share: counting the visible tokens they change, and reading the
revisions back out of a generation's history.

A *revision sampler* (``remdm``, ``edit``, ``wino``, ``d3im``) may change a token after it became
visible, either directly (visible -> another visible token: ``edit``, ``d3im``) or through the
mask (visible -> mask -> maybe another token: ``remdm``, ``wino``). Such a sampler sets
``revises = True`` on its class (the server then streams its text only when the answer is final)
and calls :func:`count_changes` with the canvas before and after each of its edits, which keeps
two per-row counters in ``state.stats``:

* ``revised``: visible tokens overwritten by a different visible token (B ints);
* ``remasked``: visible tokens turned back into the mask (B ints).

:func:`revision_events` reads any sampler's history ((S + 1, B, L) canvases) and lists every
change of a generated position's visible token, direct or through the mask: what benchmarks use
to count right revisions (a wrong token changed into the reference's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def count_changes(state, before: torch.Tensor, after: torch.Tensor) -> None:
    """Add the changes from ``before`` to ``after`` ((B, L) canvases) to ``state.stats``."""
    mask_id = state.mask_id
    visible = before != mask_id  # (B, L)
    revised = (visible & (after != mask_id) & (after != before)).sum(dim=1).tolist()  # (B,)
    remasked = (visible & (after == mask_id)).sum(dim=1).tolist()  # (B,)
    B = before.shape[0]
    for key, counts in (("revised", revised), ("remasked", remasked)):
        totals = state.stats.setdefault(key, [0] * B)
        for row, n in enumerate(counts):
            totals[row] += int(n)


@dataclass(frozen=True)
class Revision:
    row: int
    position: int  # index into the generated region (0 = first generated token)
    step: int  # the history step at which the new token appeared (1 = after the first step)
    old: int  # the visible token that was replaced
    new: int  # the token that replaced it (after a detour through the mask, the token committed next)


def revision_events(history: torch.Tensor, prompt_length: int, mask_id: int) -> list[Revision]:
    """Every change of a generated position's visible token in ``history`` (S + 1, B, L).

    A position that goes visible -> mask -> the same token again is not a revision; one that is
    remasked and never filled again (the run ended) is not either.
    """
    gen = history[:, :, prompt_length:]  # (S + 1, B, G)
    S1, B, G = gen.shape
    events = []
    last = torch.full((B, G), -1, dtype=torch.long)  # last visible token of each position (-1: none yet)
    for s in range(S1):
        cur = gen[s].cpu()
        shown = cur != mask_id  # (B, G)
        changed = shown & (last >= 0) & (cur != last)
        for row, pos in changed.nonzero().tolist():
            events.append(Revision(row, pos, s, int(last[row, pos]), int(cur[row, pos])))
        last = torch.where(shown, cur, last)
    return events


def score_revisions(events: list[Revision], reference) -> dict[str, int]:
    """How many of ``events`` were right (a token other than the reference's changed into the
    reference's), wrong (the reference's token changed into another) or neither, against
    ``reference``: per row (indexable by ``Revision.row``: a (B, G') tensor, a list or a dict of
    rows) the token ids aligned with the generated region (positions past G' count as neither)."""
    out = {"revisions": len(events), "right": 0, "wrong": 0, "neutral": 0}
    for e in events:
        ref_row = reference[e.row]
        ref = int(ref_row[e.position]) if e.position < len(ref_row) else None
        if ref is not None and e.old != ref and e.new == ref:
            out["right"] += 1
        elif ref is not None and e.old == ref and e.new != ref:
            out["wrong"] += 1
        else:
            out["neutral"] += 1
    return out
