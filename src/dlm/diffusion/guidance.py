"""Unsupervised classifier-free guidance for mask predictors (LLaDA, Appendix B.3)."""

from __future__ import annotations

import torch


def guided_logits(model, x: torch.Tensor, uncond_x: torch.Tensor, cfg_scale: float,
                  attention_mask: torch.Tensor | None = None, logits_from: int = 0) -> torch.Tensor:
    """``u + (cfg_scale + 1) * (c - u)`` from one forward pass over ``[x; uncond_x]``.

    x, uncond_x (B, L): the input and its unconditional copy (prompt replaced by mask tokens).
    Returns logits (B, L - logits_from, V).
    """
    am = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
    both = model(torch.cat([x, uncond_x]), attention_mask=am, logits_from=logits_from).logits
    cond, uncond = torch.chunk(both, 2, dim=0)
    return uncond + (cfg_scale + 1) * (cond - uncond)
