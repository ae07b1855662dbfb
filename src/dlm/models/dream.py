"""Dream (HKUNLP Dream-v0) checkpoints, run through ``transformers``' Qwen2 classes.

A Dream release is a Qwen2 network with its own ``config.json`` (``model_type: "Dream"``,
``architectures: ["DreamModel"]``, an ``auto_map`` to remote code that dlm never runs). What dlm
relies on, read from Dream's ``configuration_dream.py``, ``modeling_dream.py`` and
``generation_utils.py``:

* Parameter names already are Qwen2ForCausalLM's: ``model.embed_tokens.weight``,
  ``model.layers.N.self_attn.{q,k,v}_proj.{weight,bias}``, ``model.layers.N.self_attn.o_proj.weight``
  (no bias), ``model.layers.N.mlp.{gate,up,down}_proj.weight``,
  ``model.layers.N.{input,post_attention}_layernorm.weight``, ``model.norm.weight``,
  ``lm_head.weight``. No renaming; the per-layer ``rotary_emb.inv_freq`` buffers are not saved.
* Numerics equal Qwen2's: RMSNorm computed in fp32 then cast and scaled by the weight (eps
  ``rms_norm_eps``), rotate-half RoPE with ``rope_theta`` computed in fp32, ``head_dim = hidden_size
  / num_attention_heads``, scores scaled by ``1/sqrt(head_dim)``, SiLU-gated MLP, untied head
  unless ``tie_word_embeddings``. Two differences, both handled:
  - attention is bidirectional (``is_causal=False`` hard-coded): dlm's hf path always passes a full
    4-D additive mask, so transformers' causal default never applies;
  - Dream's SDPA attention ignores sliding windows, so the Qwen2 config has them off whatever
    ``use_sliding_window`` says.
* Logits are shifted like an AR model's (``generation_utils``: ``cat(l[:, :1], l[:, :-1])``), which
  is dlm's ``shifted=True`` alignment.
* Padded batches: Dream gives real tokens positions ``cumsum(mask) - 1`` (pads 1) and masks pad
  queries as well as pad keys; dlm keeps positions ``0..L-1`` and masks pad keys only. RoPE scores
  depend on position differences only, so every real position's logits agree up to float rounding;
  pad positions' logits differ and are never read.
"""

from __future__ import annotations

from typing import Any

from dlm.errors import CheckpointError
from dlm.validation import type_problem

MODEL_TYPE = "Dream"

# DreamConfig's defaults for the fields a config.json may leave out (configuration_dream.py).
_DEFAULTS: dict[str, Any] = {
    "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "attention_dropout": 0.0,
}
_REQUIRED_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def _field(cfg: dict[str, Any], key: str, kind: str, source: str, positive: bool = False) -> Any:
    value = cfg.get(key, _DEFAULTS.get(key))
    bad = type_problem(value, kind)
    if bad is None and positive and value <= 0:
        bad = "positive"
    if bad is not None:
        raise CheckpointError(f"{source}: field '{key}' = {value!r} must be {bad}")
    return value


def qwen2_config(cfg: dict[str, Any], source: str = "config.json") -> dict[str, Any]:
    """The Qwen2 config (keyword arguments of ``transformers.AutoConfig.for_model``) that computes
    what Dream's ``config.json`` ``cfg`` describes; a missing or unusable field is a CheckpointError."""
    for key in _REQUIRED_INTS:
        if cfg.get(key) is None:
            raise CheckpointError(f"{source}: required Dream field '{key}' is missing")
    sizes = {key: _field(cfg, key, "int", source, positive=True) for key in _REQUIRED_INTS}
    heads = sizes["num_attention_heads"]
    kv_heads = heads if cfg.get("num_key_value_heads") is None else _field(
        cfg, "num_key_value_heads", "int", source, positive=True)
    if sizes["hidden_size"] % heads:
        raise CheckpointError(f"{source}: field 'hidden_size' ({sizes['hidden_size']}) is not divisible by "
                              f"num_attention_heads ({heads})")
    if heads % kv_heads:
        raise CheckpointError(f"{source}: field 'num_key_value_heads' ({kv_heads}) does not divide "
                              f"num_attention_heads ({heads})")
    if cfg.get("rope_scaling") is not None:  # every Dream release has null
        raise CheckpointError(f"{source}: field 'rope_scaling' = {cfg['rope_scaling']!r} is not supported for "
                              "Dream (dlm implements plain RoPE: rope_scaling null)")
    hidden_act = _field(cfg, "hidden_act", "str", source)
    return {
        "model_type": "qwen2",
        **sizes,
        "num_key_value_heads": kv_heads,
        "hidden_act": hidden_act,
        "max_position_embeddings": _field(cfg, "max_position_embeddings", "int", source, positive=True),
        "rms_norm_eps": _field(cfg, "rms_norm_eps", "float", source, positive=True),
        "rope_theta": float(_field(cfg, "rope_theta", "float", source, positive=True)),
        "tie_word_embeddings": _field(cfg, "tie_word_embeddings", "bool", source),
        "attention_dropout": _field(cfg, "attention_dropout", "float", source),
        "use_sliding_window": False,  # Dream's attention never applies a window
        "sliding_window": None,
        "use_cache": False,
    }
