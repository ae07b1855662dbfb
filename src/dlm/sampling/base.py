"""The shared denoising loop every sampler runs on.

A sampler is a small class: an ``Options`` dataclass (validated, never silently adjusted) and
three hooks - ``start_block``, ``block_done`` and ``step`` - called by :meth:`Sampler.run`:

    canvas = [prompt | mask * gen_length]
    for each block:                      # semi-autoregressive blocks (one block = fully parallel)
        start_block(state, block)
        while not block_done(state, block):
            logits = state.denoise()     # one forward pass (two with CFG), counted as NFE
            step(state, block, logits)   # commit some masked positions of the canvas
            state.record()               # per-step history, progress bar

``DenoiseState`` holds everything per request: the canvas, padding mask, prompt index, NFE,
history and the random generators, so every sampler is batch-native with per-row state.

Random draws go through the state, which decides how they are made (see :func:`dlm.sampling.output.make_generators`):
``rand_canvas`` (noise per canvas position) and ``rand_rows`` (noise per row). With one generator
(or the global RNG) a draw covers the whole batch at once, the stream of LLaDA's ``generate.py``;
with one generator per row each row draws its own noise over its own tokens only (never its left
padding), so a row samples the same whether it runs alone or in any batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from dlm.diffusion.guidance import guided_logits
from dlm.errors import DLMError
from dlm.validation import type_problem


@dataclass
class Block:
    index: int
    start: int  # absolute canvas position of the first token of the block
    end: int  # exclusive
    steps_taken: int = 0


MAX_STEPS = 1_000_000  # every step is at least one forward pass; more is a typo, not a setting


def check_step_count(steps: int) -> None:
    """Refuse a step count beyond :data:`MAX_STEPS` before any per-step table is allocated."""
    if steps > MAX_STEPS:
        raise DLMError(f"steps ({steps}) is more than {MAX_STEPS:,}: every step is a forward pass")


TEMPERATURE_RANGE = (1e-4, 1e4)  # outside it (but > 0) logits / T over- or underflows float32


def check_temperature(value: float | None, name: str = "temperature") -> None:
    """A temperature-like option: 0 (greedy) or within :data:`TEMPERATURE_RANGE`."""
    lo, hi = TEMPERATURE_RANGE
    if value is None or value == 0:
        return
    if not lo <= value <= hi:
        raise DLMError(f"{name} must be 0 or between {lo:g} and {hi:g}, got {value}")


class DenoiseState:
    """Per-call state of a denoising run over a batch of left-padded prompts."""

    def __init__(self, model, x: torch.Tensor, attention_mask: torch.Tensor | None, prompt_length: int,
                 mask_id: int, cfg_scale: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 keep_history: bool = False, progress=None, keep_token_probs: bool = False, on_step=None):
        self.model = model
        self.x = x  # (B, L) canvas, L = P + G
        self.attention_mask = attention_mask  # (B, L) or None
        self.prompt_length = prompt_length
        self.mask_id = mask_id
        self.cfg_scale = cfg_scale
        self.generator = generator  # None (global RNG), one for the batch, or a list with one per row
        # first non-padding position of each row: where its per-row draws start
        self.row_start = ([0] * x.shape[0] if attention_mask is None
                          else (attention_mask == 0).sum(dim=1).tolist())
        self.prompt_index = x != mask_id  # (B, L): prompt and padding (what CFG masks out)
        self.nfe = 0
        self.stats: dict[str, Any] = {}  # what a sampler reports beyond NFE (GenerationOutput.stats)
        # (B, G) q of committed tokens (GenerationOutput.token_probs), recorded only when asked for:
        # samplers check keep_token_probs before computing them, so a timed run pays nothing
        self.keep_token_probs = keep_token_probs
        self.token_probs: torch.Tensor | None = None
        self.history: list[torch.Tensor] | None = [x.cpu().clone()] if keep_history else None
        self.progress = progress
        self.on_step = on_step  # called with the state after every step (dlm.engine streams the canvas)
        # The model sees canvas positions [0, visible): L, except under eos_policy "grow", which
        # shows the blocks decoded so far and the current one only.
        self.visible = x.shape[1]
        self.ended = [False] * x.shape[0]  # rows whose answer has ended (eos_policy, see finish_ended_rows)

    @property
    def mask_index(self) -> torch.Tensor:  # (B, L) positions still masked
        return self.x == self.mask_id

    def first_masked(self, end: int, default: int) -> int:
        """The first canvas position before ``end`` masked in any row (``default`` when none is):
        where the logits a step can use begin."""
        masked = self.mask_index[:, :end].any(dim=0).nonzero()
        return int(masked[0]) if len(masked) else default

    @property
    def visible_x(self) -> torch.Tensor:  # (B, visible) what the model sees
        return self.x if self.visible == self.x.shape[1] else self.x[:, :self.visible]

    @property
    def visible_mask(self) -> torch.Tensor | None:  # (B, visible) its padding mask
        if self.attention_mask is None or self.visible == self.x.shape[1]:
            return self.attention_mask
        return self.attention_mask[:, :self.visible]

    def denoise(self, logits_from: int = 0) -> torch.Tensor:
        """Logits (B, visible - logits_from, V) of the visible canvas; unsupervised CFG when cfg_scale > 0."""
        x, attention_mask = self.visible_x, self.visible_mask
        if self.cfg_scale > 0.0:
            un_x = x.clone()
            un_x[self.prompt_index[:, :self.visible]] = self.mask_id
            self.nfe += 2
            logits = guided_logits(self.model, x, un_x, self.cfg_scale, attention_mask, logits_from)
        else:
            self.nfe += 1
            logits = self.model(x, attention_mask=attention_mask, logits_from=logits_from).logits
        return self.check_finite(logits)

    def cached_denoise(self, cache, mode: str, start: int, end: int) -> torch.Tensor:
        """Logits (B, end - start, V) of canvas positions [start, end) from one pass with a K/V cache
        (``DiffusionLM.cached_forward``), counted as one forward pass."""
        self.nfe += 1
        return self.check_finite(self.model.cached_forward(self.visible_x, self.visible_mask, cache, mode, start, end))

    @staticmethod
    def check_finite(logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (..., V), or a DLMError if any position has a NaN, a +inf or no finite logit."""
        # one reduction over V: amax propagates NaN and is +inf / -inf exactly at the bad positions
        if not bool(torch.isfinite(logits.amax(dim=-1)).all()):
            raise DLMError("the model produced NaN/inf logits (broken or overflowed weights; try float32)")
        return logits

    def record_token_probs(self, rows, positions, probs) -> None:
        """Record q of tokens committed now: ``rows`` and absolute canvas ``positions`` (ints or index
        tensors of one shape) and their probability ``probs`` under the distribution they were drawn from."""
        if not self.keep_token_probs:
            return
        if self.token_probs is None:
            B, L = self.x.shape
            self.token_probs = torch.full((B, L - self.prompt_length), float("nan"), dtype=torch.float32,
                                          device=self.x.device)
        self.token_probs[rows, positions - self.prompt_length] = torch.as_tensor(probs, dtype=torch.float32,
                                                                                   device=self.x.device)

    @property
    def per_row(self) -> bool:
        return isinstance(self.generator, list)

    def rand_canvas(self, *trailing: int, dtype: torch.dtype = torch.float32, start: int = 0) -> torch.Tensor:
        """U(0, 1) noise (B, visible - start, *trailing) for canvas positions start..visible-1.

        One generator (or the global RNG): drawn for the whole (B, visible) canvas and sliced, as
        LLaDA's generate.py draws it. Per-row generators: see :meth:`rand_positions`.
        """
        return self.rand_positions(0, self.visible, *trailing, dtype=dtype)[:, start:]

    def rand_positions(self, a: int, b: int, *trailing: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """U(0, 1) noise (B, b - a, *trailing) for canvas positions a..b-1.

        One generator (or the global RNG): one ``torch.rand(B, b - a, *trailing)`` draw. Per-row
        generators: each row draws for its own positions only (from its first non-padding token);
        values at padding positions are 0.5 and never used.
        """
        B = self.x.shape[0]
        if not self.per_row:
            return self._rand_shared(B, b - a, *trailing, dtype=dtype)
        out = torch.full((B, b - a, *trailing), 0.5, dtype=dtype, device=self.x.device)
        for row, (gen, first) in enumerate(zip(self.generator, self.row_start)):
            lo = max(first, a)
            if lo < b:
                out[row, lo - a:] = torch.rand(b - lo, *trailing, dtype=dtype, device=self.x.device, generator=gen)
        return out

    def rand_rows(self, *trailing: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """U(0, 1) noise (B, *trailing), one draw per row (e.g. over the vocabulary for the next token)."""
        B = self.x.shape[0]
        if not self.per_row:
            return self._rand_shared(B, *trailing, dtype=dtype)
        return torch.stack([torch.rand(*trailing, dtype=dtype, device=self.x.device, generator=gen)
                            for gen in self.generator])

    def _rand_shared(self, *shape: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.rand(*shape, dtype=dtype, device=self.x.device, generator=self.generator)

    def record(self) -> None:
        if self.history is not None:
            self.history.append(self.x.cpu().clone())
        if self.progress is not None:
            self.progress.update(1)
        if self.on_step is not None:
            self.on_step(self)


def default_to_gen_length(options, *names: str) -> None:
    """Set each option in ``names`` that is None (steps, block_length) to ``options.gen_length``."""
    for name in names:
        if getattr(options, name) is None:
            setattr(options, name, options.gen_length)


class Sampler:
    """Base class: subclasses set ``name``, ``Options`` and implement the three hooks."""

    name: ClassVar[str]
    Options: ClassVar[type]
    for_causal_models: ClassVar[bool] = False  # True: decodes causal LMs (dlm_objective: causal) only

    def __init__(self, options):
        self.opts = options

    # -- hooks -------------------------------------------------------------------------------
    def validate(self, model) -> None:
        """Reject invalid option combinations with a clear message (never adjust them)."""

    def gen_length(self) -> int:
        return self.opts.gen_length

    def blocks(self, prompt_length: int) -> list[Block]:
        """Semi-autoregressive blocks over the generated region (``block_length`` option)."""
        g, b = self.opts.gen_length, self.opts.block_length
        return [Block(i, prompt_length + s, prompt_length + s + b) for i, s in enumerate(range(0, g, b))]

    @classmethod
    def has_step_budget(cls, options: dict[str, Any] | None = None) -> bool:
        """Whether the NFE of a generation with ``options`` can be chosen (``options_for_nfe``)."""
        return cls.options_for_nfe.__func__ is not Sampler.options_for_nfe.__func__

    @classmethod
    def options_for_nfe(cls, nfe: int, options: dict[str, Any]) -> dict[str, Any]:
        """The options that make one generation spend ``nfe`` forward passes (``dlm eval --nfe``)."""
        raise DLMError(f"sampler {cls.name!r} has no step budget (its forward passes follow from gen_length); "
                       f"leave out --nfe")

    def total_steps(self) -> int | None:
        """Steps for the progress bar when known in advance."""
        return None

    def start_block(self, state: DenoiseState, block: Block) -> None:
        pass

    def logits_from(self, state: DenoiseState, block: Block) -> int:
        """First canvas position whose logits ``step`` reads (positions before it are skipped)."""
        return 0

    def block_done(self, state: DenoiseState, block: Block) -> bool:
        raise NotImplementedError

    def step(self, state: DenoiseState, block: Block, logits: torch.Tensor) -> None:
        raise NotImplementedError

    def forward(self, state: DenoiseState, block: Block) -> torch.Tensor:
        """One denoiser pass: logits (B, visible - logits_from, V) (samplers with caches override it)."""
        return state.denoise(self.logits_from(state, block))

    @property
    def eos_policy(self) -> str:
        return getattr(self.opts, "eos_policy", "none")

    def validate_eos_policy(self, model) -> None:
        from dlm.sampling.eos_policy import validate_eos_policy

        validate_eos_policy(self.eos_policy, model)

    # -- the loop ----------------------------------------------------------------------------
    def run(self, state: DenoiseState) -> None:
        blocks = self.blocks(state.prompt_length)
        for block in blocks:
            if self.eos_policy == "grow":
                state.visible = block.end
            self.start_block(state, block)
            while not self.block_done(state, block):
                logits = self.forward(state, block)
                self.step(state, block, logits)
                block.steps_taken += 1
                state.record()
            if self.eos_policy != "none":
                from dlm.sampling.eos_policy import finish_ended_rows

                finish_ended_rows(state, block.end)
                if all(state.ended):
                    break
        if self.eos_policy != "none":
            state.visible = state.x.shape[1]
            state.stats["blocks_run"] = block.index + 1 if blocks else 0
            state.stats["blocks"] = len(blocks)


def parse_options(cls: type, name: str, options: dict[str, Any]):
    """Build a sampler's Options dataclass, rejecting unknown names and wrong types."""
    options = dict(options)
    valid = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise DLMError(f"sampler '{name}' has no option {unknown[0]!r} (options: {', '.join(valid)})")
    for key, value in options.items():
        kind = valid[key].type if isinstance(valid[key].type, str) else getattr(valid[key].type, "__name__", "")
        if value is None:
            if "None" not in kind:
                raise DLMError(f"sampler '{name}': option {key!r} must be set, got None")
            continue
        problem = type_problem(value, kind)
        if problem is not None:
            raise DLMError(f"sampler '{name}': option {key!r} must be {problem}, got {value!r}")
        for prefix, cast in (("int", int), ("float", float), ("bool", bool)):  # numpy scalars -> Python
            if kind.startswith(prefix):
                options[key] = cast(value)
    return cls(**options)

