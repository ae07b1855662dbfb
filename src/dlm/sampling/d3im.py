"""D3IM-style decoding: LLaDA's sampler plus a corrector that revises visible tokens in place.

"Revise, Don't Freeze" (arXiv 2606.01026) describes D3IM only in its abstract: a parameter-free,
corrector-style update that turns a visible token directly into another visible token, with no
remasking and no extra forward pass. Its rule is not public, so dlm uses this one (stated, not
the paper's):

* each step is one forward pass over the canvas, as LLaDA's sampler (``llada``), and draws
  ``x0`` at every position from it (argmax at temperature 0, LLaDA's Gumbel-max draw otherwise);
* **corrector**: every visible answer token before the current block's end (tokens committed by
  earlier steps, earlier blocks included; never the prompt) is replaced by ``x0`` at its position
  with probability ``sigma_t`` (where ``x0`` equals it, nothing changes);
* **predictor**: then LLaDA's step commits this step's share of the block's masked positions,
  the most confident ``x0`` (low-confidence remasking, LLaDA's schedule and tie-breaking).

``sigma_t`` is ReMDM's largest remasking probability for a step from ``t`` to ``s``,
``sigma_max = min(1, (1 - alpha_s) / alpha_t)``, with ``alpha`` the share of the answer that is
visible: ``alpha_t`` before the step, ``alpha_s`` after its commits, per row. ReMDM sends a visible
token back to the mask with that probability and lets the next pass redraw it; D3IM's corrector
draws it from the current pass straight away, which is what "without the detour through the
mask" means. It is schedule-derived and needs no parameter: 1 while at most half the answer is
visible, then falling to 0 at the last step (the final step revises nothing). ``eta`` caps it
(``min(eta, sigma_max)``, ReMDM's "cap" schedule) for users who want fewer revisions.

At temperature 0 the corrector's coin flips are the only randomness (drawn per canvas position
through the state's generators, so per-row seeds make a row independent of its batch); with
``eta=0`` the sampler is exactly ``llada`` (no coins are drawn then, so even its random stream is). ``state.stats["revised"]`` counts the tokens changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm.errors import DLMError
from dlm.sampling.base import Block, DenoiseState
from dlm.sampling.llada import LLaDAOptions, LLaDASampler
from dlm.sampling.revision import count_changes


@dataclass
class D3IMOptions(LLaDAOptions):
    eta: float | None = None  # cap on the revision probability; None = sigma_max (parameter-free)


def revision_probability(visible_before: torch.Tensor, visible_after: torch.Tensor, answer_length: int,
                         eta: float | None) -> torch.Tensor:
    """(B,) sigma_t = min(1, (1 - alpha_s) / alpha_t) (capped at ``eta``) from the visible answer
    tokens of each row before (alpha_t) and after (alpha_s) a step; 0 where nothing is visible."""
    alpha_t = visible_before.double() / answer_length
    alpha_s = visible_after.double() / answer_length
    sigma = torch.where(alpha_t > 0, ((1 - alpha_s) / alpha_t.clamp_min(1e-12)).clamp(max=1.0),
                        torch.zeros_like(alpha_t))
    return sigma if eta is None else sigma.clamp(max=eta)


class D3IMSampler(LLaDASampler):
    name = "d3im"
    Options = D3IMOptions
    revises = True

    def validate(self, model) -> None:
        super().validate(model)
        eta = self.opts.eta
        if eta is not None and not 0.0 <= eta <= 1.0:
            raise DLMError(f"eta (the cap on the revision probability) must be in [0, 1], got {eta}")
        if self.opts.remasking != "low_confidence":
            raise DLMError("d3im commits by confidence; remasking='random' is llada's option only")

    def logits_from(self, state: DenoiseState, block: Block) -> int:
        return state.prompt_length  # the corrector reads every answer position

    def step(self, state: DenoiseState, block: Block, logits: torch.Tensor) -> None:
        x = state.x  # (B, L)
        P, G = state.prompt_length, x.shape[1] - state.prompt_length
        x0 = self.draw(state, logits)  # (B, visible - P)
        if self.opts.eta == 0:  # no corrector: no coin flips either, so the random stream is llada's
            return self.commit(state, block, logits, x0)
        end = block.end - P  # answer positions [0, end) may be revised
        answer = x[:, P:block.end]  # (B, end)
        shown = answer != state.mask_id  # (B, end)
        k = self._schedule[:, block.steps_taken]  # (B,) commits of this step
        before = (x[:, P:] != state.mask_id).sum(dim=1)  # (B,)
        sigma = revision_probability(before, before + k, G, self.opts.eta)  # (B,)
        coin = state.rand_positions(P, block.end)  # (B, end) U(0, 1)
        revise = shown & (coin < sigma[:, None].to(coin.dtype)) & (x0[:, :end] != answer)  # (B, end)
        old = x.clone()
        x[:, P:block.end] = torch.where(revise, x0[:, :end], answer)
        count_changes(state, old, x)
        self.commit(state, block, logits, x0)
