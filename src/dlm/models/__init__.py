"""Architectures, checkpoint loading and the registry of model facts."""

from dlm.models.diffusion_lm import DiffusionLM
from dlm.models.lengths import LengthWarning, check_length
from dlm.models.llada import LLaDAConfig, LLaDAModelLM
from dlm.models.loading import load, save_pretrained
from dlm.models.registry import FAMILIES, ModelFacts

__all__ = ["FAMILIES", "DiffusionLM", "LLaDAConfig", "LLaDAModelLM", "LengthWarning", "ModelFacts", "check_length",
           "load", "save_pretrained"]
