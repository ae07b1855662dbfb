"""``wino``: WINO (wide-in, narrow-out) - parallel drafting with leave-one-out verification and remasking.

Semantics of Feng-Hong/WINO-DLLM ``LLaDA/decoding.py`` ``decoding_wino`` (commit 9549a1d, with its
``modeling_llada.py``), written anew on dlm's loop and checked token for token (and NFE) against
outputs of the reference on tiny random LLaDA weights (tests/fixtures/wino):

* semi-autoregressive blocks of ``block_length``. Every pass runs the canvas followed by a *shadow
  block* of ``block_length`` mask tokens that carry the position ids of the current block. Canvas
  queries attend to the canvas only; shadow slot k attends to every canvas position except block
  position k (its counterpart) and to all shadow slots. One forward pass (NFE 1) gives the canvas
  logits and, at slot k, a leave-one-out prediction of block token k;
* wide-in: ``x0 = argmax`` (T = 0) or LLaDA's float64 Gumbel-max (noise drawn over the whole canvas
  plus the shadow block, as the reference draws it), confidence ``softmax(float64 logits)[x0]``;
  candidates are the masked positions before the block end. Accept every candidate with confidence
  > ``threshold``; if more than ``clip(int(0.7 * #candidates), 5, 20)`` pass (the 0.7 product in
  float32), accept only that many, by ``torch.topk``; if none passes, accept the argmax (first on ties);
* narrow-out (only when this pass accepted more than one token of the row): each block token that
  was visible *before* the pass gets its leave-one-out confidence (the shadow slot's softmax at the
  token); those < ``threshold_back`` go back to the mask, but when there are at least ``last``
  of them (``last``: the number accepted by the row's previous pass of this block, 30 at a block's
  first pass) only the ``last - 1`` lowest (``torch.topk(largest=False)``) do;
* a block runs until it has no masks (the candidates include any mask before it); NFE = passes.
  Top-k ranks run over a row laid out as the reference's (no padding, canvas + shadow), so ties
  break the same way.

dlm adds: left-padded batches (padded keys masked; each row keeps its own accept/remask state and a
finished row is left alone while others continue, so at T = 0 a row equals its batch-1 run), per-row
seeds, ``eos_policy`` (see :mod:`dlm.sampling.eos_policy`), and - where the reference would commit
the mask id itself (possible with random weights; it then ends a block with a mask) - the best other
token instead.

Shifted (AR-adapted) models: the logits of token i come from the hidden state at i - 1, so the shadow
slot that verifies block token i mirrors canvas position i - 1: it holds the token at i - 1 with i - 1's
position id, attends to the canvas except positions i - 1 and i, and to itself only (another slot would
hold token i). It is the hidden state at i - 1 recomputed as if token i were absent. One inert slot
(a mask attending to itself) closes the shadow so the last slot's output survives the one-position
shift of ``DiffusionLM.forward``.

The model call is ``model(x, attention_mask=mask, attention_bias=bias, position_ids=positions,
logits_from=lo)`` with x (B, Lv + S) the visible canvas and the shadow, mask (B, Lv + S) or None,
bias (1, 1, Lv + S, Lv + S) additive float32, positions (B, Lv + S) long; S = block_length (+ 1 shifted).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm.errors import DLMError
from dlm.sampling.base import Block, DenoiseState, Sampler, check_temperature, default_to_gen_length
from dlm.sampling.llada import check_blocks, gumbel_argmax
from dlm.sampling.output import token_probability
from dlm.sampling.revision import count_changes

ACCEPT_SHARE, MIN_ACCEPT, MAX_ACCEPT = 0.7, 5, 20  # wide-in cap: clip(int(0.7 * candidates), 5, 20)
FIRST_LAST_ACCEPT = 30  # the reference's ``last_accept`` at the start of every block


@dataclass
class WinoOptions:
    gen_length: int = 128
    block_length: int | None = None  # default: gen_length (one block)
    temperature: float = 0.0
    threshold: float = 0.6  # wide-in: accept masked positions whose confidence > threshold
    threshold_back: float = 0.9  # narrow-out: remask visible block tokens whose leave-one-out p < threshold_back
    mask_id: int | None = None  # default: the model's mask token
    eos_policy: str = "none"  # "stop_after_eos" / "grow": stop once every row's answer has ended


class WinoSampler(Sampler):
    name = "wino"
    Options = WinoOptions
    revises = True

    def __init__(self, options: WinoOptions):
        default_to_gen_length(options, "block_length")
        super().__init__(options)

    def validate(self, model) -> None:
        o = self.opts
        check_blocks(o)
        for name in ("threshold", "threshold_back"):
            value = getattr(o, name)
            if not 0.0 <= value <= 1.0:
                raise DLMError(f"{name} must be in [0, 1], got {value}")
        if o.temperature < 0:
            raise DLMError(f"temperature must be >= 0, got {o.temperature}")
        check_temperature(o.temperature)
        self.validate_eos_policy(model)

    # -- hooks -------------------------------------------------------------------------------
    def start_block(self, state: DenoiseState, block: Block) -> None:
        self._last_accept = [FIRST_LAST_ACCEPT] * state.x.shape[0]

    def block_done(self, state: DenoiseState, block: Block) -> bool:
        return not bool(state.mask_index[:, :block.end].any())

    def forward(self, state: DenoiseState, block: Block) -> torch.Tensor:
        """Aligned logits (B, Lv + S - lo, V) of canvas positions lo.. and of the shadow (one pass)."""
        x, pad = state.visible_x, state.visible_mask  # (B, Lv)
        B, Lv = x.shape
        s, e, n = block.start, block.end, block.end - block.start
        model, dev = state.model, x.device
        shifted = int(bool(model.facts.shifted))  # 1 or 0
        S = n + shifted  # shadow slots (+ the inert closing slot of a shifted model)
        src = torch.arange(s, e, device=dev) - shifted  # (n,) canvas position each slot mirrors
        pos = model.default_positions(pad, B, Lv, dev)  # (B, Lv)
        shadow = x[:, src] if shifted else torch.full((B, n), state.mask_id, dtype=x.dtype, device=dev)
        shadow_pos = pos[:, src]  # (B, n)
        if shifted:
            shadow = torch.cat([shadow, torch.full((B, 1), state.mask_id, dtype=x.dtype, device=dev)], dim=1)
            shadow_pos = torch.cat([shadow_pos, pos[:, e - 1:e]], dim=1)
        xx = torch.cat([x, shadow], dim=1)  # (B, Lv + S)
        positions = torch.cat([pos, shadow_pos], dim=1)  # (B, Lv + S)
        mask = None if pad is None else torch.cat([pad, torch.ones_like(pad[:, :S])], dim=1)  # (B, Lv + S)
        neg = torch.finfo(torch.float32).min
        allow = torch.ones(Lv + S, Lv + S, dtype=torch.bool, device=dev)  # (query, key)
        allow[:Lv, Lv:] = False  # the canvas never sees the shadow
        slots = torch.arange(n, device=dev)
        allow[Lv + slots, s + slots] = False  # slot k does not see block token k
        if shifted:
            allow[Lv:, Lv:] = torch.eye(S, dtype=torch.bool, device=dev)  # each slot sees itself only
            allow[Lv + slots, src] = False  # ... in place of the canvas position it mirrors
            allow[Lv + n, :Lv] = False  # the closing slot is inert
        bias = torch.zeros(1, 1, Lv + S, Lv + S, device=dev).masked_fill(~allow, neg)
        self._lo = lo = state.first_masked(e, default=s)
        self._shadow_at = Lv + shifted - lo  # row of the logits where slot 0's prediction sits
        state.nfe += 1
        logits = model(xx, attention_mask=mask, attention_bias=bias, position_ids=positions, logits_from=lo).logits
        return state.check_finite(logits)

    def step(self, state: DenoiseState, block: Block, logits: torch.Tensor) -> None:
        o, x, mask_id = self.opts, state.x, state.mask_id
        B, L = x.shape
        s, e, n, lo = block.start, block.end, block.end - block.start, self._lo
        V = logits.shape[-1]
        canvas = logits[:, :e - lo]  # (B, e - lo, V) canvas positions lo..e-1
        shadow = logits[:, self._shadow_at:self._shadow_at + n]  # (B, n, V) leave-one-out of block tokens
        noise = None
        if o.temperature > 0:  # drawn over canvas + shadow, the shape of the reference's logits
            noise = state.rand_positions(0, state.visible + n, V, dtype=torch.float64)[:, lo:e]
        x0 = gumbel_argmax(canvas, o.temperature, noise)  # (B, e - lo)
        if bool((x0 == mask_id).any()):  # never commit the mask token itself
            scores = canvas.to(torch.float64) if noise is None else \
                canvas.to(torch.float64).exp() / (-torch.log(noise)) ** o.temperature
            scores[:, :, mask_id] = -torch.inf
            x0 = torch.where(x0 == mask_id, scores.argmax(dim=-1), x0)
        confidence = torch.softmax(canvas.to(torch.float64), dim=-1).gather(-1, x0[..., None])[..., 0]  # (B, e - lo)
        candidates = state.mask_index[:, lo:e]  # (B, e - lo)
        confidence = confidence.masked_fill(~candidates, -torch.inf)
        before = x.clone()  # (B, L)
        block_before = before[:, s:e]  # (B, n)
        back = torch.softmax(shadow.to(torch.float64), dim=-1).gather(-1, block_before[..., None])[..., 0]
        back = back.masked_fill(block_before == mask_id, torch.inf)  # (B, n) leave-one-out p of visible tokens
        counts = candidates.sum(dim=1)  # (B,)
        caps = (counts * ACCEPT_SHARE).long().clamp(MIN_ACCEPT, MAX_ACCEPT).tolist()  # float32 product, as the reference
        transfer = confidence > o.threshold  # (B, e - lo)
        remask = torch.zeros(B, n, dtype=torch.bool, device=x.device)
        for row in range(B):
            if int(counts[row]) == 0:  # finished: left alone while other rows continue
                transfer[row] = False
                continue
            width = L - state.row_start[row] + n  # the reference's row: this row's canvas + shadow
            accepted = int(transfer[row].sum())
            if accepted > caps[row]:
                ranked = self._as_reference(confidence[row], lo, width, row, state, -torch.inf)
                transfer[row] = False
                transfer[row, torch.topk(ranked, k=caps[row]).indices + state.row_start[row] - lo] = True
                accepted = caps[row]
            elif accepted == 0:
                transfer[row, int(confidence[row].argmax())] = True
                accepted = 1
            if accepted > 1:
                low = back[row] < o.threshold_back  # (n,)
                last = self._last_accept[row]
                if int(low.sum()) >= last:
                    ranked = torch.full((width,), torch.inf, dtype=back.dtype, device=x.device)
                    ranked[-n:] = back[row]
                    low = torch.zeros_like(low)
                    low[torch.topk(ranked, k=last - 1, largest=False).indices - (width - n)] = True
                remask[row] = low
            self._last_accept[row] = accepted
        window = x[:, lo:e]
        window[transfer] = x0[transfer]
        x[:, s:e][remask] = mask_id
        count_changes(state, before, x)
        if state.keep_token_probs and bool(transfer.any()):
            rows, cols = transfer.nonzero(as_tuple=True)
            state.record_token_probs(rows, cols + lo, token_probability(canvas[rows, cols], x0[rows, cols],
                                                                        o.temperature))

    @staticmethod
    def _as_reference(values: torch.Tensor, lo: int, width: int, row: int, state: DenoiseState,
                      fill: float) -> torch.Tensor:
        """``values`` (canvas positions lo..) laid out on the reference's row (width,): from the row's
        first real token, ``fill`` elsewhere."""
        first = state.row_start[row]
        out = torch.full((width,), fill, dtype=values.dtype, device=values.device)
        out[lo - first:lo - first + len(values)] = values
        return out
