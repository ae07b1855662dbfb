"""``dream``: Dream's samplers (HKUNLP/Dream ``generation_utils.py``) for every diffusion model.

Semantics of ``DreamGenerationMixin._sample``, written anew and checked token for token against
the reference on tiny random Dream weights (tests/fixtures/dream/sampler_cases.json). One canvas,
no blocks, exactly ``steps`` forward passes:

* timesteps ``linspace(1, eps, steps + 1)`` (float32); step ``i`` goes from ``t = ts[i]`` to ``s = ts[i + 1]``;
* tokens are drawn by ``sample_tokens``: logits / ``temperature`` (T > 0), then ``top_p`` (nucleus,
  the first token always kept) and ``top_k`` filters (``finfo.min`` fill), softmax; T > 0 draws
  from ``Categorical(probs)`` (``torch.multinomial`` on the renormalised probabilities), T = 0 takes
  ``probs.max``; the confidence is the chosen token's probability;
* ``alg="origin"``: each masked position is revealed with probability ``1 - s / t`` (all at the last
  step): one ``torch.rand`` over the masked positions, then tokens drawn for the revealed ones only;
* ``maskgit_plus`` / ``topk_margin`` / ``entropy``: tokens drawn for every masked position, ranked by
  their probability / top-1 minus top-2 probability / ``sum p log(p + 1e-10)``; a row with ``n``
  masks commits ``int(n * (1 - s / t))`` (all at the last step), the top ones - or, with
  ``alg_temp`` > 0, a draw without replacement from ``softmax(confidence / alg_temp)``.

Random draws happen in the reference's order (reveal draw, token draws, position draws). With one
generator (or the global RNG) each draw covers the batch at once, as the reference; with one
generator per row each row draws for itself (its own masked positions, in order), so a row samples
the same alone or in any batch. The reference counts the masks as a batch mean; rows of one canvas
always hold the same number of masks, so dlm counts per row, which is the same number.

Logits are dlm's position-aligned ones, so ``dream`` runs on shifted models (Dream itself, the
``cat(l[:, :1], l[:, :-1])`` of the reference) and unshifted ones (LLaDA) alike. A token predicted
as the mask id stays masked, as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlm.errors import DLMError
from dlm.sampling.base import Block, DenoiseState, Sampler, check_step_count, check_temperature, default_to_gen_length

ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")


@dataclass
class DreamOptions:
    gen_length: int = 128
    steps: int | None = None  # default: gen_length
    alg: str = "origin"  # origin | maskgit_plus | topk_margin | entropy
    alg_temp: float | None = None  # > 0: draw the positions to commit from softmax(confidence / alg_temp)
    temperature: float = 0.0
    top_p: float | None = None  # nucleus filter in (0, 1] (T > 0 sampling and the confidences)
    top_k: int | None = None  # keep the k most likely tokens
    eps: float = 1e-3  # the last timestep
    mask_id: int | None = None  # default: the model's mask token


def filter_logits(logits: torch.Tensor, temperature: float, top_p: float | None, top_k: int | None) -> torch.Tensor:
    """Dream's temperature, top-p and top-k on (N, V) logits (filtered entries = finfo.min)."""
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        drop = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1) > top_p
        drop[..., 1:] = drop[..., :-1].clone()  # keep the token that crosses top_p
        drop[..., 0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter_(-1, order, drop), torch.finfo(logits.dtype).min)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]))[0][..., -1, None]
        logits = logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)
    return logits


class DreamSampler(Sampler):
    name = "dream"
    Options = DreamOptions

    def __init__(self, options: DreamOptions):
        default_to_gen_length(options, "steps")
        super().__init__(options)

    @classmethod
    def options_for_nfe(cls, nfe: int, options: dict) -> dict:
        return {"steps": nfe}

    def validate(self, model) -> None:
        o = self.opts
        if o.gen_length <= 0:
            raise DLMError(f"gen_length must be >= 1, got {o.gen_length}")
        if o.steps <= 0:
            raise DLMError(f"steps must be >= 1, got {o.steps}")
        check_step_count(o.steps)
        if o.alg not in ALGS:
            raise DLMError(f"alg must be one of {', '.join(ALGS)}, got {o.alg!r}")
        if o.alg_temp is not None and o.alg_temp < 0:
            raise DLMError(f"alg_temp must be >= 0, got {o.alg_temp}")
        if o.alg_temp and o.alg == "origin":
            raise DLMError("alg_temp ranks positions by confidence; alg 'origin' reveals them at random - "
                           "use maskgit_plus, topk_margin or entropy")
        if o.temperature < 0:
            raise DLMError(f"temperature must be >= 0, got {o.temperature}")
        check_temperature(o.temperature)
        check_temperature(o.alg_temp, "alg_temp")
        if o.top_p is not None and not 0.0 < o.top_p <= 1.0:
            raise DLMError(f"top_p must be in (0, 1], got {o.top_p}")
        if o.top_k is not None and o.top_k < 1:
            raise DLMError(f"top_k must be >= 1, got {o.top_k}")
        if not 0.0 < o.eps < 1.0:
            raise DLMError(f"eps must be in (0, 1), got {o.eps}")

    def total_steps(self) -> int:
        return self.opts.steps

    def blocks(self, prompt_length: int) -> list[Block]:
        return [Block(0, prompt_length, prompt_length + self.opts.gen_length)]

    def start_block(self, state: DenoiseState, block: Block) -> None:
        self._timesteps = torch.linspace(1, self.opts.eps, self.opts.steps + 1, device=state.x.device)

    def block_done(self, state: DenoiseState, block: Block) -> bool:
        return block.steps_taken == self.opts.steps

    def logits_from(self, state: DenoiseState, block: Block) -> int:
        return state.first_masked(state.x.shape[1], default=block.start)

    # -- one step ----------------------------------------------------------------------------
    def step(self, state: DenoiseState, block: Block, logits: torch.Tensor) -> None:
        o, x = self.opts, state.x
        B, L = x.shape
        lo = L - logits.shape[1]  # logits: (B, L - lo, V)
        i, last = block.steps_taken, block.steps_taken == o.steps - 1
        t, s = self._timesteps[i], self._timesteps[i + 1]
        mask_index = state.mask_index  # (B, L)
        if o.alg == "origin":
            p_transfer = 1 if last else 1 - s / t
            counts = mask_index.sum(dim=1).tolist()
            reveal = self._rand_per_mask(state, counts) < p_transfer  # (N,) over the masked positions, row-major
            rows, cols = mask_index.nonzero(as_tuple=True)
            rows, cols = rows[reveal], cols[reveal]
            x0, probs = self._draw(state, logits[rows, cols - lo], rows)
            x[rows, cols] = x0
            self._record(state, rows, cols, probs, x0)
            return
        rows, cols = mask_index.nonzero(as_tuple=True)  # (N,) row-major
        x0, probs = self._draw(state, logits[rows, cols - lo], rows)
        if o.alg == "maskgit_plus":
            confidence = probs.gather(-1, x0[:, None])[:, 0]
        elif o.alg == "topk_margin":
            top2 = torch.sort(probs, dim=-1, descending=True)[0][:, :2]
            confidence = top2[:, 0] - top2[:, 1]
        else:
            confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
        full_confidence = torch.full((B, L), -torch.inf, dtype=logits.dtype, device=x.device)
        full_confidence[rows, cols] = confidence
        proposal = torch.full_like(x, state.mask_id)
        proposal[rows, cols] = x0
        q = None
        if state.keep_token_probs:  # (B, L) probability of each proposed token
            q = torch.full((B, L), float("nan"), dtype=torch.float32, device=x.device)
            q[rows, cols] = probs.gather(-1, x0[:, None])[:, 0].float()
        counts = mask_index.sum(dim=1).tolist()
        ns = [c if last else int(torch.tensor(c, dtype=torch.float32) * (1 - s / t)) for c in counts]
        picks = self._positions(state, full_confidence, ns)
        for row, picked in enumerate(picks):
            if picked is None:
                continue
            x[row, picked] = proposal[row, picked]
            if q is not None:
                state.record_token_probs(row, picked, q[row, picked])

    def _positions(self, state: DenoiseState, confidence: torch.Tensor, ns: list[int]) -> list:
        """Per row the positions (n,) to commit (None when n = 0): the top-n of (B, L) ``confidence``,
        or with alg_temp a draw without replacement from softmax(confidence / alg_temp)."""
        alg_temp = self.opts.alg_temp
        if not alg_temp:
            return [torch.topk(confidence[row], n).indices if n > 0 else None for row, n in enumerate(ns)]
        weights = F.softmax(confidence / alg_temp, dim=-1)  # (B, L)
        if not state.per_row and len(set(ns)) == 1:  # the reference: one draw for the whole batch
            if ns[0] <= 0:
                return [None] * len(ns)
            return list(torch.multinomial(weights, num_samples=ns[0], generator=state.generator))
        gens = state.generator if state.per_row else [state.generator] * len(ns)
        return [torch.multinomial(weights[row], num_samples=n, generator=gens[row]) if n > 0 else None
                for row, n in enumerate(ns)]

    # -- random draws, in the reference's order ------------------------------------------------
    def _rand_per_mask(self, state: DenoiseState, counts: list[int]) -> torch.Tensor:
        """U(0, 1) float32 per masked position (row-major): one draw for the batch, or one per row."""
        if not state.per_row:
            return torch.rand(sum(counts), device=state.x.device, generator=state.generator)
        return torch.cat([torch.rand(n, device=state.x.device, generator=g) for n, g in zip(counts, state.generator)])

    def _draw(self, state: DenoiseState, logits: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (N,) and the probabilities (N, V) they were drawn from, for logits (N, V) of rows ``rows``."""
        o = self.opts
        probs = torch.softmax(filter_logits(logits, o.temperature, o.top_p, o.top_k), dim=-1)
        if o.temperature == 0 or len(probs) == 0:
            return probs.max(dim=-1).indices, probs
        norm = probs / probs.sum(-1, keepdim=True)  # torch.distributions.Categorical's normalisation
        if not state.per_row:
            return torch.multinomial(norm, 1, True, generator=state.generator)[:, 0], probs
        x0 = torch.empty(len(probs), dtype=torch.long, device=probs.device)
        for row, gen in enumerate(state.generator):
            sel = (rows == row).nonzero()[:, 0]
            if len(sel):
                x0[sel] = torch.multinomial(norm[sel], 1, True, generator=gen)[:, 0]
        return x0, probs

    def _record(self, state: DenoiseState, rows, cols, probs, x0) -> None:
        if state.keep_token_probs and len(rows):
            state.record_token_probs(rows, cols, probs.gather(-1, x0[:, None])[:, 0].float())
