"""dlm: diffusion language models - loading, sampling, likelihood, training and evaluation.

    import dlm
    model = dlm.load("path/to/checkpoint")        # or dlm.load() for the shipped default
    out = dlm.generate(model, input_ids, sampler="llada", steps=64, gen_length=64, block_length=32)
    alpha = dlm.acceptance_rate(model, dlm.generate(model, input_ids, return_dict=True))  # introspection
"""

from dlm.diffusion import acceptance_rate, loglikelihood, masked_diffusion_loss
from dlm.errors import CheckpointError, DLMError
from dlm.models import DiffusionLM, ModelFacts, load, save_pretrained
from dlm.repair import RepairOutput, repair
from dlm.sampling import SAMPLERS, GenerationOutput, generate, sampler_options

__version__ = "0.1.0"

__all__ = [
    "SAMPLERS", "CheckpointError", "DLMError", "DiffusionLM", "GenerationOutput", "ModelFacts", "__version__",
    "RepairOutput", "acceptance_rate", "generate", "load", "loglikelihood", "masked_diffusion_loss", "repair",
    "sampler_options", "save_pretrained",
]
