"""Masked diffusion: the forward process, ELBO losses, the Monte Carlo likelihood and the
introspective acceptance rate (how far a model endorses its own samples)."""

from dlm.diffusion.guidance import guided_logits
from dlm.diffusion.introspection import AcceptanceRate, acceptance_rate
from dlm.diffusion.likelihood import loglikelihood, stratified_mask
from dlm.diffusion.losses import DiffusionLoss, masked_diffusion_loss
from dlm.diffusion.masking import EPS, mask_tokens, sample_t

__all__ = ["EPS", "AcceptanceRate", "DiffusionLoss", "acceptance_rate", "guided_logits", "loglikelihood", "mask_tokens",
           "masked_diffusion_loss", "sample_t", "stratified_mask"]
