"""Masked diffusion: the forward process, ELBO losses and the Monte Carlo likelihood."""

from dlm.diffusion.guidance import guided_logits
from dlm.diffusion.likelihood import loglikelihood, stratified_mask
from dlm.diffusion.losses import DiffusionLoss, masked_diffusion_loss
from dlm.diffusion.masking import EPS, mask_tokens, sample_t

__all__ = ["EPS", "DiffusionLoss", "guided_logits", "loglikelihood", "mask_tokens", "masked_diffusion_loss", "sample_t",
           "stratified_mask"]
