"""Length checks before a forward pass over a long canvas: the declared maximum, memory, trained length.

``check_length(model, batch, total_length, what)`` is the one place every entry point (generation,
likelihood, serving) asks "may this model run on ``batch`` rows of ``total_length`` tokens?":

* past the maximum config.json declares (``max_position_embeddings``, ``max_sequence_length``,
  GPT-2's ``n_positions``) it raises a :class:`DLMError` naming the numbers and the field;
* when the estimated memory of one forward pass exceeds what the device has free it raises
  before anything is allocated (:func:`dlm.resources.require_memory`);
* past the length the model was trained on (``dlm_training.seq_len``) it warns
  (:class:`LengthWarning`): the run works, but quality is untested there.
"""

from __future__ import annotations

import warnings
from typing import Any

from dlm.errors import DLMError
from dlm.resources import forward_bytes, require_memory


class LengthWarning(UserWarning):
    """A run longer than the sequences the model was trained on."""


def model_dims(model: Any) -> dict[str, int]:
    """d_model, n_heads, n_layers, vocab and mlp_hidden of a DiffusionLM (LLaDA or transformers)."""
    cfg = model.net.config
    if model.is_llada:  # dlm's LLaDAConfig
        return dict(d_model=cfg.d_model, n_heads=cfg.n_heads, n_layers=cfg.n_layers,
                    vocab=model.facts.vocab_size, mlp_hidden=cfg.hidden_size)
    # transformers configs map GPT-2's n_embd / n_head / n_layer onto these names
    d_model = int(cfg.hidden_size)
    mlp = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d_model
    return dict(d_model=d_model, n_heads=int(cfg.num_attention_heads), n_layers=int(cfg.num_hidden_layers),
                vocab=model.facts.vocab_size, mlp_hidden=int(mlp))


def check_length(model: Any, batch: int, total_length: int, what: str, training: bool = False) -> None:
    """Refuse a canvas of (batch, total_length) that cannot run; warn past the trained length.

    ``what`` names the length for the messages, e.g. ``"prompt (12) + gen_length (256)"``.
    """
    facts = model.facts
    if facts.max_length is not None and total_length > facts.max_length:
        source = f"{model.path}/config.json" if model.path else "config.json"
        raise DLMError(f"{what} = {total_length} tokens exceeds this model's {facts.max_length} positions "
                       f"(the maximum {source} declares as {facts.max_length_field})")
    dims = model_dims(model)
    needed = forward_bytes(batch, total_length, training=training, dtype_bytes=model.dtype.itemsize, **dims)
    require_memory(needed, model.device, f"a forward pass over {batch} x {total_length} tokens ({what})",
                   hint="use a shorter length or a smaller batch")
    if facts.trained_length is not None and total_length > facts.trained_length:
        warnings.warn(f"{what} = {total_length} tokens is longer than the {facts.trained_length} tokens this model "
                      "was trained on (config.json dlm_training.seq_len); expect degraded output",
                      LengthWarning, stacklevel=2)
