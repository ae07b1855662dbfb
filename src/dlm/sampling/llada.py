"""LLaDA's sampler: low-confidence (or random) remasking with semi-autoregressive blocks.

Semantics are those of ML-GSAI/LLaDA ``generate.py`` (2025-10 version with ``attention_mask``),
token for token at temperature 0 and with the same random stream at temperature > 0 (the same
``torch.rand`` calls in the same order, so ``torch.manual_seed(s)`` before a call reproduces it;
per-row seeds draw each row's noise separately instead, see ``DenoiseState.rand_canvas``):

* the generated region is split into ``gen_length / block_length`` blocks decoded left to right;
  each block gets ``steps / num_blocks`` steps;
* a block with ``n`` masked tokens commits ``n // S`` tokens per step, the first ``n % S`` steps one
  more (``transfer_schedule``);
* each step predicts ``x0 = argmax(logits)`` (temperature 0) or the Gumbel-max sample
  ``argmax(exp(l) / (-log U)^T)`` in float64; confidence is ``softmax(logits)[x0]`` (or ``U(0, 1)``
  for ``remasking="random"``), ``-inf`` past the current block and at unmasked positions, and the
  top-k most confident masked positions of each row are committed.

Each committed token's q - its probability under the distribution it was drawn from - is recorded
in ``GenerationOutput.token_probs``: the Gumbel-max draw ``argmax(l / T + Gumbel)`` samples
``softmax(l / T)``, so q = ``softmax(l / T)[x0]`` at T > 0 (the logits after ``logits_eos_inf``, which
shapes the draw; before ``confidence_eos_eot_inf``, which only ranks positions), and at T = 0 the
softmax at T = 1, i.e. the low-confidence score itself. It is read from the logits of the step that
commits the token (with ``cfg_scale``, the guided logits) and changes nothing the sampler draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlm.errors import DLMError
from dlm.sampling.base import Block, DenoiseState, Sampler, check_step_count, check_temperature, default_to_gen_length
from dlm.sampling.output import token_probability

MAX_CFG_SCALE = 1e4  # (cfg_scale + 1) * (cond - uncond) overflows float32 long before larger scales


def transfer_schedule(mask_count: torch.Tensor, steps: int) -> torch.Tensor:
    """(B,) masked tokens per row -> (B, steps) tokens to commit at each step."""
    base = mask_count // steps
    remainder = mask_count % steps
    sched = base[:, None].expand(-1, steps).clone()
    sched += torch.arange(steps, device=mask_count.device)[None, :] < remainder[:, None]
    return sched.to(torch.int64)


def check_blocks(o) -> None:
    """gen_length and block_length of a block sampler's options (``o``)."""
    if o.gen_length <= 0:
        raise DLMError(f"gen_length must be >= 1, got {o.gen_length}")
    if o.block_length <= 0 or o.gen_length % o.block_length != 0:
        raise DLMError(f"gen_length ({o.gen_length}) must be a positive multiple of block_length ({o.block_length})")


def check_steps(o) -> None:
    """steps of LLaDA's schedule: a positive multiple of the number of blocks."""
    num_blocks = o.gen_length // o.block_length
    check_step_count(o.steps)
    if o.steps <= 0 or o.steps % num_blocks != 0:
        raise DLMError(
            f"steps ({o.steps}) must be a positive multiple of the number of blocks "
            f"({num_blocks} = gen_length {o.gen_length} / block_length {o.block_length})"
        )


def check_sampling(o) -> None:
    """temperature and remasking of LLaDA-style options."""
    if o.temperature < 0:
        raise DLMError(f"temperature must be >= 0, got {o.temperature}")
    check_temperature(o.temperature)
    if o.remasking not in ("low_confidence", "random"):
        raise DLMError(f"remasking must be 'low_confidence' or 'random', got {o.remasking!r}")


def block_schedule(state: DenoiseState, block: Block, o) -> torch.Tensor:
    """(B, steps per block) tokens each row commits at each step of ``block`` (LLaDA's schedule)."""
    steps_per_block = o.steps // (o.gen_length // o.block_length)
    block_masks = state.mask_index[:, block.start:block.end].sum(dim=1)  # (B,)
    return transfer_schedule(block_masks, steps_per_block)


def gumbel_argmax(logits: torch.Tensor, temperature: float, noise: torch.Tensor | None) -> torch.Tensor:
    """argmax(exp(l) / (-log U)^T) in float64 (LLaDA's Gumbel-max); plain argmax at T = 0."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    return (logits.to(torch.float64).exp() / (-torch.log(noise)) ** temperature).argmax(dim=-1)


@dataclass
class LLaDAOptions:
    gen_length: int = 128
    steps: int | None = None  # default: gen_length (one token per step)
    block_length: int | None = None  # default: gen_length (one block)
    temperature: float = 0.0
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"
    mask_id: int | None = None  # default: the model's mask token
    logits_eos_inf: bool = False  # EOS logits = -inf: EOS is never predicted
    confidence_eos_eot_inf: bool = False  # EOS/EoT predictions get zero confidence (see below)
    window_logits: bool = True  # head + softmax only where tokens can be committed; False = full, as the reference
    eos_policy: str = "none"  # "stop_after_eos" / "grow": stop once every row's answer has ended (sampling/base.py)


class LLaDASampler(Sampler):
    name = "llada"
    Options = LLaDAOptions

    def __init__(self, options: LLaDAOptions):
        default_to_gen_length(options, "steps", "block_length")
        super().__init__(options)

    @classmethod
    def options_for_nfe(cls, nfe: int, options: dict) -> dict:
        """steps = NFE (NFE / 2 with classifier-free guidance, whose steps cost two passes)."""
        if options.get("cfg_scale", 0.0) > 0:
            if nfe % 2:
                raise DLMError(f"with cfg_scale > 0 every step costs 2 forward passes; NFE {nfe} is odd")
            return {"steps": nfe // 2}
        return {"steps": nfe}

    def validate(self, model) -> None:
        o = self.opts
        check_blocks(o)
        check_steps(o)
        check_sampling(o)
        if not 0 <= o.cfg_scale <= MAX_CFG_SCALE:
            raise DLMError(f"cfg_scale must be in [0, {MAX_CFG_SCALE:g}], got {o.cfg_scale}")
        self.validate_eos_policy(model)
        if (o.logits_eos_inf or o.confidence_eos_eot_inf) and not model.facts.eos_ids:
            raise DLMError("logits_eos_inf / confidence_eos_eot_inf need an EOS id, and this model has none")

    def total_steps(self) -> int:
        return self.opts.steps

    def start_block(self, state: DenoiseState, block: Block) -> None:
        self._schedule = block_schedule(state, block, self.opts)  # (B, steps per block)

    def block_done(self, state: DenoiseState, block: Block) -> bool:
        return block.steps_taken == self._schedule.shape[1]

    def logits_from(self, state: DenoiseState, block: Block) -> int:
        # Only masked positions before the block end can be committed; skip the head elsewhere.
        # (On CPU the sliced head is bit-identical; on GPUs a differently shaped matmul may round
        # differently, so window_logits=False reproduces the reference's full computation.)
        if not self.opts.window_logits:
            return 0
        return state.first_masked(block.end, default=block.start)

    def step(self, state: DenoiseState, block: Block, logits: torch.Tensor) -> None:
        x0 = self.draw(state, logits)
        self.commit(state, block, logits, x0)

    def draw(self, state: DenoiseState, logits: torch.Tensor) -> torch.Tensor:
        """x0 (B, hi - lo): a token drawn at every canvas position the logits (B, hi - lo, V) cover."""
        o = self.opts
        lo = state.visible - logits.shape[1]  # logits cover canvas positions lo..visible-1
        if o.logits_eos_inf:
            logits[:, :, list(state.model.facts.eos_ids)] = -torch.inf
        # Gumbel noise (B, hi - lo, V); with one generator it is drawn for the whole canvas, as the
        # reference does, to share its stream (see DenoiseState.rand_canvas).
        noise = state.rand_canvas(logits.shape[-1], dtype=torch.float64, start=lo) if o.temperature > 0 else None
        return gumbel_argmax(logits, o.temperature, noise)  # (B, hi - lo)

    def commit(self, state: DenoiseState, block: Block, logits: torch.Tensor, x0: torch.Tensor) -> None:
        """Commit this step's share of the block's masked positions: the most confident x0."""
        o, x = self.opts, state.x
        B, L = x.shape
        hi = state.visible
        lo = hi - logits.shape[1]  # logits cover canvas positions lo..hi-1
        eos = list(state.model.facts.eos_ids)
        drop, kept = [], None
        if o.confidence_eos_eot_inf:
            # The reference's chained assignment `noisy[..., EOS] = logits[..., EoT] = -inf`: at
            # temperature 0 `noisy is logits`, so EOS and EoT both leave the softmax; at
            # temperature > 0 only EoT does.
            eot = state.model.facts.eot_id
            drop = ([] if eot is None else [eot]) + (eos if o.temperature == 0 else [])
            kept = logits[:, :, drop].clone()  # (B, hi - lo, |drop|): what x0 was drawn from, for q
            logits[:, :, drop] = -torch.inf
        if o.remasking == "low_confidence":
            p = F.softmax(logits, dim=-1)
            x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)  # (B, hi - lo)
        else:
            x0_p = state.rand_canvas(start=lo)  # (B, hi - lo)
        mask_index = state.mask_index  # (B, L)
        # Rank over the full row, as the reference does, so that ties break the same way.
        confidence = torch.full((B, L), -torch.inf, dtype=x0_p.dtype, device=x.device)
        confidence[:, lo:block.end] = x0_p[:, :block.end - lo]
        confidence = confidence.masked_fill(~mask_index, -torch.inf)
        candidates = x.clone()
        candidates[:, lo:hi] = torch.where(mask_index[:, lo:hi], x0, x[:, lo:hi])
        for row, k in enumerate(self._schedule[:, block.steps_taken].tolist()):
            if k == 0:
                continue
            _, idx = torch.topk(confidence[row], k=k)
            x[row, idx] = candidates[row, idx]
            chosen = logits[row, idx - lo]  # (k, V)
            if not state.keep_token_probs:
                continue
            if kept is not None:  # q of the draw: the logits before the confidence edit
                chosen = chosen.clone()
                chosen[:, drop] = kept[row, idx - lo]
            state.record_token_probs(row, idx, token_probability(chosen, x0[row, idx - lo], o.temperature))
