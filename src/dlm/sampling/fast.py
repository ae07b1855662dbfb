"""``fast``: Fast-dLLM's decoding - parallel threshold / factor commits and prefix / dual K/V caches.

Semantics of NVlabs/Fast-dLLM ``v1/llada/generate.py`` (upstream a9b81e4: ``generate``,
``generate_with_prefix_cache``, ``generate_with_dual_cache``, ``get_transfer_index``,
``get_transfer_index_dynamic``), written anew on dlm's loop and checked token for token (and NFE)
against outputs of the reference on tiny random LLaDA weights (tests/fixtures/fast):

* semi-autoregressive blocks of ``block_length``; ``x0 = argmax`` (T = 0) or LLaDA's float64
  Gumbel-max at T > 0; confidence ``softmax(float64 logits)[x0]`` (or U(0, 1) for
  ``remasking="random"``); candidates are the masked positions of the current block;
* commit rule: ``threshold`` - the most confident candidate always, plus every candidate whose
  confidence >= ``threshold``; ``factor`` - candidates sorted by confidence, the n-th (1-based) needs
  ``1 - factor / (n + 1)``, the first always goes, the prefix up to the first failure is committed
  (the reference's quirk kept: when the first failure is the last candidate, or nothing fails, all
  are committed); neither - LLaDA's top-k schedule (``steps / num_blocks`` steps per block);
* ``cache="none"``: the whole canvas every pass. ``"prefix"``: a full pass at each block start (its
  logits make the block's first step) caches K/V; the prefix before the block is frozen and later
  passes run the block and everything after it. ``"dual"``: the same full pass, then only the block
  runs, against the cached K/V of the whole canvas, writing its own K/V in place.
* NFE counts every pass run. A block runs until it has no masks. Top-k schedule: ``steps`` passes
  in all (cached or not). With a threshold or factor every pass commits at least one token per row.

Where dlm differs from the reference, on purpose:

* the reference's dual-cache loop stops a block after ``steps / num_blocks`` passes even when a
  threshold / factor left masks in it; those masks stay candidates at later blocks' first step and
  can remain in the output. dlm runs every block until it is complete, so its output has no masks;
  it equals the reference's wherever the reference completes its blocks. ``steps`` only shapes the
  top-k schedule, so it is refused together with ``threshold`` / ``factor``;
* the reference has no padding (its LLaDA copy ignores ``attention_mask``); dlm decodes left-padded
  batches (padded keys masked in every pass and cache) and at T = 0 each row equals its batch-1 run;
* a token predicted as the mask id itself (possible with random weights; the reference then
  crashes or loops) is replaced by the best other token;
* at T > 0 ``generate_with_prefix_cache`` draws its Gumbel noise twice per cached step (one draw is
  thrown away); dlm draws the same way so that a seed reproduces the reference's samples.

``eos_policy`` (``stop_after_eos`` / ``grow``, see :mod:`dlm.sampling.base`) works with every cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm.errors import DLMError
from dlm.sampling.base import Block, DenoiseState, Sampler, default_to_gen_length
from dlm.sampling.output import token_probability
from dlm.sampling.llada import block_schedule, check_blocks, check_sampling, check_steps

CACHES = ("none", "prefix", "dual")


@dataclass
class FastOptions:
    gen_length: int = 128
    steps: int | None = None  # top-k schedule only: passes in all (default gen_length); refused with threshold/factor
    block_length: int | None = None  # default: gen_length (one block)
    temperature: float = 0.0
    remasking: str = "low_confidence"
    threshold: float | None = None  # commit every candidate with confidence >= threshold (plus the best one)
    factor: float | None = None  # Fast-dLLM's factor rule (the n-th best needs 1 - factor / (n + 1))
    cache: str = "none"  # "none" | "prefix" | "dual"
    mask_id: int | None = None  # default: the model's mask token
    eos_policy: str = "none"  # "stop_after_eos" / "grow": stop once every row's answer has ended


class FastSampler(Sampler):
    name = "fast"
    Options = FastOptions

    def __init__(self, options: FastOptions):
        default_to_gen_length(options, "block_length")
        self.parallel = options.threshold is not None or options.factor is not None
        if options.steps is None and not self.parallel:
            options.steps = options.gen_length
        super().__init__(options)

    @classmethod
    def has_step_budget(cls, options: dict | None = None) -> bool:
        options = options or {}
        return options.get("threshold") is None and options.get("factor") is None

    @classmethod
    def options_for_nfe(cls, nfe: int, options: dict) -> dict:
        """steps = NFE with the top-k schedule (one pass per step, cached or not)."""
        if options.get("threshold") is not None or options.get("factor") is not None:
            raise DLMError("with threshold or factor the number of forward passes depends on the model's "
                           "confidence; leave out --nfe")
        return {"steps": nfe}

    def validate(self, model) -> None:
        o = self.opts
        check_blocks(o)
        if o.threshold is not None and o.factor is not None:
            raise DLMError("give threshold or factor, not both")
        if o.threshold is not None and not 0.0 < o.threshold <= 1.0:
            raise DLMError(f"threshold must be in (0, 1], got {o.threshold}")
        if o.factor is not None and not o.factor > 0.0:
            raise DLMError(f"factor must be > 0, got {o.factor}")
        if self.parallel and o.steps is not None:
            raise DLMError("steps only sets the top-k schedule; with threshold or factor every block runs until "
                           "it is complete - leave steps out")
        if not self.parallel:
            check_steps(o)
        check_sampling(o)
        if o.cache not in CACHES:
            raise DLMError(f"cache must be one of {', '.join(CACHES)}, got {o.cache!r}")
        self.validate_eos_policy(model)

    def total_steps(self) -> int | None:
        return None if self.parallel else self.opts.steps

    # -- hooks -------------------------------------------------------------------------------
    def start_block(self, state: DenoiseState, block: Block) -> None:
        if not self.parallel:
            self._schedule = block_schedule(state, block, self.opts)  # (B, steps per block)
        if self.opts.cache != "none" and block.index == 0:
            self._cache = state.model.new_cache()

    def block_done(self, state: DenoiseState, block: Block) -> bool:
        return not bool(state.mask_index[:, block.start:block.end].any())

    def forward(self, state: DenoiseState, block: Block) -> torch.Tensor:
        """Logits of canvas positions [self._lo, self._lo + n); ``self._span``: the positions the
        reference's logits of this pass cover (the shape its random draws take)."""
        cache, first = self.opts.cache, block.steps_taken == 0
        if cache == "none" or first:
            self._lo = state.first_masked(block.end, default=block.start)  # the first position that can change
            self._span, self._draws = (0, state.visible), 1
            if cache == "none":
                return state.denoise(self._lo)[:, :block.end - self._lo]
            return state.cached_denoise(self._cache, "fill", self._lo, block.end)
        self._lo = block.start
        if cache == "prefix":  # the reference runs x[:, s:] and draws its noise twice (see the module doc)
            self._span, self._draws = (block.start, state.visible), 2
        else:
            self._span, self._draws = (block.start, block.end), 1
        return state.cached_denoise(self._cache, cache, block.start, block.end)

    def step(self, state: DenoiseState, block: Block, logits: torch.Tensor) -> None:
        o, x = self.opts, state.x
        lo, hi = self._lo, self._lo + logits.shape[1]  # logits: (B, hi - lo, V)
        a, b = self._span
        if o.temperature > 0:
            for _ in range(self._draws):
                noise = state.rand_positions(a, b, logits.shape[-1], dtype=torch.float64)[:, lo - a:hi - a]
            scores = logits.to(torch.float64).exp() / (-torch.log(noise)) ** o.temperature
        else:
            scores = logits
        x0 = scores.argmax(dim=-1)  # (B, hi - lo)
        if bool((x0 == state.mask_id).any()):  # never commit the mask token itself
            scores = scores.clone()
            scores[:, :, state.mask_id] = -torch.inf
            x0 = torch.where(x0 == state.mask_id, scores.argmax(dim=-1), x0)
        if o.remasking == "low_confidence":
            p = torch.softmax(logits.to(torch.float64), dim=-1)
            confidence = p.gather(-1, x0[..., None])[..., 0]  # (B, hi - lo) float64
        else:  # the reference draws float64 for the top-k / threshold rules, float32 for factor
            dtype = torch.float32 if o.factor is not None else torch.float64
            confidence = state.rand_positions(a, b, dtype=dtype)[:, lo - a:hi - a]
        positions = torch.arange(lo, hi, device=x.device)
        candidates = state.mask_index[:, lo:hi] & (positions < block.end)[None]  # (B, hi - lo)
        confidence = confidence.masked_fill(~candidates, -torch.inf)
        transfer = self.select(confidence, candidates, block)  # (B, hi - lo) bool
        window = x[:, lo:hi]
        window[transfer] = x0[transfer]
        if state.keep_token_probs and bool(transfer.any()):
            rows, cols = transfer.nonzero(as_tuple=True)
            state.record_token_probs(rows, cols + lo, token_probability(logits[rows, cols], x0[rows, cols], o.temperature))

    def select(self, confidence: torch.Tensor, candidates: torch.Tensor, block: Block) -> torch.Tensor:
        """Which candidates to commit: (B, n) confidence (-inf off the candidates) -> (B, n) bool."""
        o = self.opts
        if o.threshold is not None:
            best = torch.zeros_like(candidates).scatter_(1, confidence.argmax(dim=1, keepdim=True), True)
            return ((confidence >= o.threshold) | best) & candidates
        transfer = torch.zeros_like(candidates)
        counts = (self._schedule[:, block.steps_taken] if o.factor is None else candidates.sum(dim=1)).tolist()
        for row, n in enumerate(counts):
            if n == 0:
                continue
            if o.factor is not None:
                n = factor_count(confidence[row][candidates[row]], o.factor)
            transfer[row, torch.topk(confidence[row], k=n).indices] = True
        return transfer & candidates


def factor_count(confidence: torch.Tensor, factor: float) -> int:
    """How many of the candidates (their confidences, any order) the factor rule commits.

    The comparisons run in the confidences' dtype, as the reference compares a tensor with Python
    floats (float32 for random remasking, float64 otherwise)."""
    ranked = torch.sort(confidence, descending=True).values  # (n,)
    n = len(ranked)
    needed = torch.tensor([-1.0] + [1 - factor / (i + 1) for i in range(2, n + 1)], dtype=ranked.dtype)
    failed = (ranked < needed).nonzero()
    top = int(failed[0]) if len(failed) else n - 1  # the first failure, else the last index
    return top + 1 if top in (0, n - 1) else top  # the reference's quirk: a failure at the last one commits all
