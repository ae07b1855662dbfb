"""The forward (noising) process of masked diffusion: each token is masked with probability t."""

from __future__ import annotations

import torch

EPS = 1e-3  # t ~ U(eps, 1): LLaDA / MDLM keep t away from 0 so the 1/t weight stays bounded


def sample_t(batch: int, eps: float = EPS, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) mask ratios p = (1 - eps) * U(0, 1) + eps, LLaDA's ``forward_process``."""
    u = torch.rand(batch, device=device, generator=generator)
    return (1 - eps) * u + eps


def mask_tokens(input_ids: torch.Tensor, mask_id: int, t: torch.Tensor, maskable: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each maskable token independently with probability ``t`` of its row.

    input_ids (B, L), t (B,) -> (noisy ids (B, L), masked (B, L) bool). ``maskable`` (B, L) bool
    excludes positions (prompt, padding) from noising.
    """
    p = t[:, None].expand_as(input_ids)  # (B, L)
    masked = torch.rand(input_ids.shape, device=input_ids.device, generator=generator) < p
    if maskable is not None:
        masked &= maskable
    return torch.where(masked, torch.full_like(input_ids, mask_id), input_ids), masked
