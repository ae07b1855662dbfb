"""Architectures, checkpoint loading and the registry of model facts."""

from dlm.models.diffusion_lm import DiffusionLM
from dlm.models.llada import LLaDAConfig, LLaDAModelLM
from dlm.models.loading import load, save_pretrained
from dlm.models.registry import FAMILIES, ModelFacts

__all__ = ["FAMILIES", "DiffusionLM", "LLaDAConfig", "LLaDAModelLM", "ModelFacts", "load", "save_pretrained"]
