"""What a sampler returns and the randomness it draws from: ``GenerationOutput``,
``token_probability`` (q of a committed token) and ``make_generators`` (seed -> generators)."""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy
import torch

from dlm.errors import DLMError


@dataclass
class GenerationOutput:
    """What ``dlm.generate(..., return_dict=True)`` returns."""

    sequences: torch.Tensor  # (B, P + G) prompt followed by the generated tokens
    prompt_length: int  # P
    nfe: int  # denoiser forward passes per sequence (a CFG step counts 2)
    seconds: float
    history: torch.Tensor | None = None  # (S + 1, B, P + G): the initial canvas and the canvas after each step
    sampler: str = ""
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)  # sampler figures (isd: tokens_per_forward, ...)
    # (B, G) float32: q of each generated token - its probability under the distribution the sampler
    # drew it from when it was committed (see token_probability); NaN where no token was drawn (the EOS
    # fill after a row stopped); None when the sampler records nothing. dlm.acceptance_rate reads it.
    token_probs: torch.Tensor | None = None

    @property
    def generated(self) -> torch.Tensor:  # (B, G)
        return self.sequences[:, self.prompt_length:]


Seed = Union[int, Sequence[int], None]


def token_probability(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T)[token] in float64: logits (..., V), tokens (...) -> (...).

    The probability the samplers record as q of a committed token (``GenerationOutput.token_probs``)
    and :func:`dlm.acceptance_rate` computes as p of the causal re-scoring, so both go through the
    same arithmetic. T = 0 (greedy: the argmax, a point mass) is read at T = 1, the model's own
    softmax - the confidence LLaDA ranks positions by.
    """
    z = logits.double()
    if temperature > 0 and temperature != 1.0:
        z = z / temperature
    return (z.gather(-1, tokens[..., None].to(z.device)) - torch.logsumexp(z, dim=-1, keepdim=True))[..., 0].exp()


def make_generators(seed: Seed, batch: int, device) -> torch.Generator | list[torch.Generator] | None:
    """``None`` -> the global torch RNG; an int -> one generator for the batch; a list of ints
    (one per row) -> one generator per row."""
    def generator(s, what: str) -> torch.Generator:
        if not isinstance(s, numbers.Integral) or isinstance(s, (bool, numpy.bool_)):
            raise DLMError(f"{what} must be an integer, got {s!r}")
        try:
            return torch.Generator(device=device).manual_seed(int(s))
        except (ValueError, RuntimeError, OverflowError):
            raise DLMError(f"{what} {s} is out of range (seeds are 64-bit integers)") from None

    if seed is None:
        return None
    if isinstance(seed, (list, tuple)):
        if len(seed) != batch:
            raise DLMError(f"seed is a list of {len(seed)} per-row seeds, but the batch has {batch} rows")
        return [generator(s, f"seed[{i}]") for i, s in enumerate(seed)]
    return generator(seed, "seed")
