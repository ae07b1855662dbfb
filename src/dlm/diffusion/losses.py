"""Masked-diffusion training losses: the ELBO with 1/t weighting of LLaDA / MDLM.

Pretraining (all positions noisable):
    loss = sum over masked (b, i) of CE(logits[b, i], x[b, i]) / t_b, divided by B * L
    (by the number of noisable positions: padding and a shifted model's position 0 excluded)
SFT (prompt never masked, loss normalised by each row's answer length):
    loss = sum_b [ sum over masked answer positions of CE / t_b ] / answer_len_b, divided by B
Both are the negative ELBO up to the constant factor, per token, in nats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlm.diffusion.masking import EPS, mask_tokens, sample_t


@dataclass
class DiffusionLoss:
    loss: torch.Tensor  # scalar, differentiable
    masked_tokens: int  # positions that contributed
    t: torch.Tensor  # (B,) mask ratios used


def maskable_positions(model, input_ids: torch.Tensor, prompt_lengths: torch.Tensor | None = None,
                       attention_mask: torch.Tensor | None = None, shifted: bool | None = None) -> torch.Tensor:
    """(B, L) bool: positions the forward process may mask - not the prompt (SFT: before each row's
    ``prompt_lengths``), not padding, and not position 0 of a shifted model (``shifted`` defaults to
    ``model.facts.shifted``), which has no prediction of its own."""
    B, L = input_ids.shape
    maskable = torch.ones_like(input_ids, dtype=torch.bool)
    if prompt_lengths is not None:
        pos = torch.arange(L, device=input_ids.device)[None, :]  # (1, L)
        maskable &= pos >= prompt_lengths.to(input_ids.device)[:, None]
    if attention_mask is not None:
        maskable &= attention_mask.bool()
    if shifted is None:
        facts = getattr(model, "facts", None)
        shifted = facts is not None and facts.shifted
    if shifted:
        maskable[:, 0] = False
    return maskable


def masked_diffusion_loss(model, input_ids: torch.Tensor, mask_id: int, *, prompt_lengths: torch.Tensor | None = None,
                          attention_mask: torch.Tensor | None = None, eps: float = EPS,
                          generator: torch.Generator | None = None, shifted: bool | None = None,
                          attention_bias: torch.Tensor | None = None,
                          normalize: str = "tokens") -> DiffusionLoss:
    """One Monte Carlo sample of the masked-diffusion ELBO loss for a batch.

    input_ids (B, L). ``prompt_lengths`` (B,) switches to the SFT objective: positions before each
    row's prompt length are never masked and the loss is normalised by answer length.
    ``attention_mask`` (B, L) marks padding, which is neither masked nor counted. Note that
    LLaDA's SFT recipe pads answers with EOS tokens that *are* noised and trained (that is how the
    model learns to stop): for that recipe pass the EOS-padded batch with ``attention_mask=None``.

    ``shifted`` (default: ``model.facts.shifted``; pass it when ``model`` is wrapped, e.g. by DDP)
    keeps position 0 unmasked. ``attention_bias`` (1 or B, 1, L, L) is added to the attention
    scores (the annealed mask of AR adaptation). ``normalize="masked"`` divides the pretraining
    loss by the number of masked tokens instead of B * L, as DiffuGPT/DiffuLLaMA do.
    """
    if normalize not in ("tokens", "masked"):
        raise ValueError(f"normalize must be 'tokens' or 'masked', got {normalize!r}")
    B, L = input_ids.shape
    device = input_ids.device
    t = sample_t(B, eps, device, generator)  # (B,)
    maskable = maskable_positions(model, input_ids, prompt_lengths, attention_mask, shifted)
    noisy, masked = mask_tokens(input_ids, mask_id, t, maskable, generator)
    kwargs = {"attention_bias": attention_bias} if attention_bias is not None else {}
    logits = model(noisy, attention_mask=attention_mask, **kwargs).logits  # (B, L, V)
    ce = F.cross_entropy(logits[masked].float(), input_ids[masked], reduction="none")  # (M,)
    weighted = ce / t[:, None].expand(B, L)[masked]
    if prompt_lengths is None and normalize == "masked":
        loss = weighted.sum() / masked.sum().clamp_min(1)
    elif prompt_lengths is None:
        # B * L for LLaDA; without padding and, for shifted models, without position 0
        loss = weighted.sum() / maskable.sum().clamp_min(1)
    else:
        answer_len = maskable.sum(dim=1).clamp_min(1).float()  # (B,)
        per_row = torch.zeros(B, device=device).index_add(0, masked.nonzero()[:, 0], weighted)
        loss = (per_row / answer_len).sum() / B
    return DiffusionLoss(loss=loss, masked_tokens=int(masked.sum()), t=t)
