"""``edit``: LLaDA2.1-style joint-threshold decoding with token editing (mask -> token and token -> token).

Semantics of SGLang's ``JointThreshold`` (``python/sglang/srt/dllm/algorithm/joint_threshold.py``
with the block driver ``DllmAlgorithm._run_sync`` of ``algorithm/base.py``, sgl-project/sglang
17d5721), written anew on dlm's loop and checked token for token (and forward passes) against the
reference driven on tiny random LLaDA weights (tests/fixtures/edit, scripts/derive_edit_fixtures.py).
Greedy only, as the reference. Per block of ``block_length`` tokens, each step (one full-canvas
forward pass) does, for every row not finished yet:

* ``penalty_lambda > 0``: ``lambda`` is subtracted from the logit (float32) of the token currently at
  the previous position, for every block position but the first (the previous token may be the
  mask id: its logit is lowered too, as in the reference);
* ``x = argmax(logits)``, ``p = softmax(logits)[x]`` (float32);
* mask -> token (M2T): masked positions with ``p > threshold`` are filled with ``x``; when none
  passes, the most confident masked position (``topk(1)``) is filled;
* when the block has no mask left the step is a post-edit step; the row is finished (and this step
  changes nothing) once it has taken more than ``max_post_edit_steps`` of them;
* token -> token (T2T): visible positions of the block (never the prompt or an earlier block) whose
  ``x`` differs from the current token and whose ``p > edit_threshold`` are overwritten with ``x``;
* a row whose step changes nothing is finished. A finished row never changes again in the block;
  the block ends when every row is finished (at most ``block_length + max_post_edit_steps + 1``
  steps: every step before the post-edit ones fills at least one mask).

Blocks are ``[P + k * block_length, P + (k + 1) * block_length)`` of the generated region, so the
prompt is never inside a block (SGLang aligns blocks to absolute positions and protects the prompt
tail of the first block with its ``prompt_mask``; here T2T never touches the prompt or the blocks
before the current one either). NFE varies with the model's confidence: there is no step budget.

Where dlm differs from the reference, on purpose:

* forward passes: SGLang runs one more pass per block after the last step (a finished block's
  tokens are written to its K/V cache; the logits of that pass are never read). dlm has no cache
  and counts only the passes whose logits a step reads: reference passes - 1 per block;
* a token predicted as the mask id itself (the reference would then "fill" a mask with the mask,
  or turn a visible token back into the mask) is replaced by the best other token (the fixtures
  never hit it);
* the logits are read in float32 whatever the model's dtype (the reference's are float32).

Batches: rows finish at different steps; the loop runs until every row of the block is finished,
so forward passes still run for the whole batch; ``state.stats["forwards"]`` (per row) counts the
passes each row needed (its own finishing step included), what it would take alone.
``eos_policy`` (see :mod:`dlm.sampling.eos_policy`): a row whose answer has ended is finished in
every later block. Revisions are counted in ``state.stats["revised"]`` (:mod:`dlm.sampling.revision`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dlm.errors import DLMError
from dlm.sampling.base import MAX_STEPS, Block, DenoiseState, Sampler
from dlm.sampling.llada import check_blocks
from dlm.sampling.output import token_probability
from dlm.sampling.revision import count_changes


@dataclass
class EditOptions:
    gen_length: int = 128
    block_length: int = 32
    threshold: float = 0.5  # M2T: fill masked positions with p > threshold (at least the most confident one)
    edit_threshold: float = 0.0  # T2T: overwrite visible tokens whose argmax differs, where p > edit_threshold
    max_post_edit_steps: int = 16  # edit-only steps a block may take once it has no mask left
    penalty_lambda: float = 0.0  # subtracted from the logit of the previous position's token
    mask_id: int | None = None  # default: the model's mask token
    eos_policy: str = "none"  # "stop_after_eos" / "grow": stop once every row's answer has ended


class EditSampler(Sampler):
    name = "edit"
    Options = EditOptions
    revises = True

    @classmethod
    def has_step_budget(cls, options: dict | None = None) -> bool:
        return False

    @classmethod
    def options_for_nfe(cls, nfe: int, options: dict) -> dict:
        raise DLMError("sampler 'edit' has no step budget: its forward passes depend on the model's confidence "
                       "(threshold, edit_threshold, max_post_edit_steps); leave out --nfe")

    def validate(self, model) -> None:
        o = self.opts
        check_blocks(o)
        for name in ("threshold", "edit_threshold"):
            value = getattr(o, name)
            if not 0.0 <= value <= 1.0:
                raise DLMError(f"{name} must be in [0, 1] (a probability), got {value}")
        if not 0 <= o.max_post_edit_steps <= MAX_STEPS:
            raise DLMError(f"max_post_edit_steps must be between 0 and {MAX_STEPS:,}, got {o.max_post_edit_steps}")
        if not (o.penalty_lambda >= 0.0 and math.isfinite(o.penalty_lambda)):
            raise DLMError(f"penalty_lambda must be a finite number >= 0, got {o.penalty_lambda}")
        self.validate_eos_policy(model)

    # -- the loop ----------------------------------------------------------------------------
    def run(self, state: DenoiseState) -> None:
        self._forwards = [0] * state.x.shape[0]  # passes each row needed
        count_changes(state, state.x, state.x)  # the revision counters start at 0 per row
        super().run(state)
        state.stats["forwards"] = list(self._forwards)

    def start_block(self, state: DenoiseState, block: Block) -> None:
        device = state.x.device
        self._finished = torch.tensor(state.ended, dtype=torch.bool, device=device)  # (B,) ended rows stay as they are
        self._post_edits = torch.zeros(state.x.shape[0], dtype=torch.long, device=device)  # (B,)

    def block_done(self, state: DenoiseState, block: Block) -> bool:
        return bool(self._finished.all())

    def logits_from(self, state: DenoiseState, block: Block) -> int:
        return block.start

    def step(self, state: DenoiseState, block: Block, logits: torch.Tensor) -> None:
        o, mask_id = self.opts, state.mask_id
        n = block.end - block.start
        logits = logits[:, :n].float()  # (B, n, V) the block's logits
        cur = state.x[:, block.start:block.end]  # (B, n) view of the canvas
        active = ~self._finished  # (B,)
        if o.penalty_lambda > 0:
            lam = torch.full((cur.shape[0], n - 1, 1), -o.penalty_lambda, dtype=logits.dtype, device=logits.device)
            logits[:, 1:].scatter_add_(2, cur[:, :-1, None], lam)
        x = logits.argmax(dim=-1)  # (B, n)
        if bool((x == mask_id).any()):  # never propose the mask token itself
            x = torch.where(x == mask_id, logits.index_fill(-1, torch.tensor([mask_id], device=x.device),
                                                            -torch.inf).argmax(dim=-1), x)
        p = torch.softmax(logits, dim=-1).gather(-1, x[..., None])[..., 0]  # (B, n) float32
        masked = cur == mask_id  # (B, n)
        has_mask = masked.any(dim=1)  # (B,)
        # mask -> token: above the threshold, else the most confident masked position
        confidence = p.masked_fill(~masked, -torch.inf)
        m2t = confidence > o.threshold
        forced = has_mask & ~m2t.any(dim=1)  # (B,)
        m2t |= torch.zeros_like(m2t).scatter_(1, confidence.topk(1, dim=1).indices, forced[:, None])
        # post-edit steps: a row without masks past its budget is finished and changes nothing
        post = active & ~has_mask
        self._post_edits += post.long()
        exhausted = post & (self._post_edits > o.max_post_edit_steps)  # (B,)
        # token -> token: visible positions whose prediction changed with enough confidence
        t2t = ~masked & (p > o.edit_threshold) & (cur != x)
        transfer = (m2t | t2t) & (active & ~exhausted)[:, None]  # (B, n)
        for row in active.nonzero()[:, 0].tolist():
            self._forwards[row] += 1
        self._finished |= active & ~transfer.any(dim=1)
        if not bool(transfer.any()):
            return
        before = cur.clone()
        cur[transfer] = x[transfer]
        count_changes(state, before, cur)
        if state.keep_token_probs:
            rows, cols = transfer.nonzero(as_tuple=True)
            q = token_probability(logits[rows, cols], x[rows, cols], 0.0)  # greedy: the softmax at T = 1
            state.record_token_probs(rows, cols + block.start, q)
