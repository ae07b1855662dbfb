"""Models to train: a fresh LLaMA-style causal LM or LLaDA of a given size, or a saved checkpoint.

``tiny-ar`` (``arch="llama"``) and ``tiny-mdm`` (``arch="llada"``) built with the same
:class:`ModelSize` have the same parameter count: both are pre-norm RMSNorm / SwiGLU / RoPE
transformers with tied input and output embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dlm.errors import DLMError
from dlm.resources import available_bytes, format_bytes, forward_bytes, require_memory
from dlm.models.diffusion_lm import DiffusionLM
from dlm.models.llada import LLaDAConfig, LLaDAModelLM
from dlm.models.registry import CAUSAL_OBJECTIVES, resolve_facts

ARCHS = ("llama", "llada")


@dataclass
class ModelSize:
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    mlp_hidden: int = 768
    max_positions: int = 1024
    rope_theta: float = 10000.0


def special_ids(tokenizer) -> dict[str, int]:
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id, "mask_token_id": tokenizer.mask_token_id}
    missing = [k for k, v in ids.items() if v is None]
    if missing:
        raise DLMError(f"the tokenizer lacks special tokens needed for training: {', '.join(missing)}")
    if "<|eot|>" in tokenizer.get_vocab():
        ids["eot_token_id"] = tokenizer.convert_tokens_to_ids("<|eot|>")
    return ids


def new_model(arch: str, size: ModelSize, tokenizer, seed: int = 0, objective: str = "mdm") -> DiffusionLM:
    """A randomly initialised model (std 0.02) with ``tokenizer``'s vocabulary and special ids."""
    if arch not in ARCHS:
        raise DLMError(f"unknown architecture {arch!r} (choose from {', '.join(ARCHS)})")
    if size.d_model % size.n_heads:
        raise DLMError(f"d_model {size.d_model} is not divisible by n_heads {size.n_heads}")
    vocab = len(tokenizer)
    ids = special_ids(tokenizer)
    torch.manual_seed(seed)
    if arch == "llada":
        from dlm.models.default import tiny_llada_config

        cfg = tiny_llada_config(vocab, d_model=size.d_model, n_layers=size.n_layers, n_heads=size.n_heads,
                                n_kv_heads=size.n_heads, mlp_hidden_size=size.mlp_hidden, weight_tying=True,
                                max_sequence_length=size.max_positions, rope_theta=size.rope_theta, **ids)
        net = LLaDAModelLM(LLaDAConfig.from_dict(cfg))
        net.init_weights(std=0.02, generator=torch.Generator().manual_seed(seed))
        model_type = "llada"
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        hf = LlamaConfig(vocab_size=vocab, hidden_size=size.d_model, intermediate_size=size.mlp_hidden,
                         num_hidden_layers=size.n_layers, num_attention_heads=size.n_heads,
                         num_key_value_heads=size.n_heads, max_position_embeddings=size.max_positions,
                         rope_theta=size.rope_theta, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         initializer_range=0.02, **{k: v for k, v in ids.items() if k != "eot_token_id"})
        net = LlamaForCausalLM._from_config(hf, attn_implementation="sdpa")
        cfg = hf.to_dict()
        cfg.update(ids)
        model_type = "llama"
    cfg["dlm_objective"] = objective if objective in CAUSAL_OBJECTIVES else "diffusion"
    vocab_rows = net.config.padded_vocab_size if arch == "llada" else vocab
    facts = resolve_facts(model_type, cfg, vocab_rows, tokenizer)
    return DiffusionLM(net, facts, cfg, tokenizer=tokenizer, path=None)


def load_for_training(path: str | Path, objective: str) -> DiffusionLM:
    """A saved model to continue training with ``objective`` (fp32). A causal LM trained further
    with a diffusion objective becomes a shifted diffusion model (AR -> diffusion adaptation)."""
    from dlm.models.loading import load

    return for_objective(load(path, dtype="float32"), objective, path)


def for_objective(model: DiffusionLM, objective: str, path: str | Path) -> DiffusionLM:
    """``model`` (loaded from ``path``) set up to train with ``objective`` (see :func:`load_for_training`).
    ``dlm_objective`` follows the objective: ``causal``, ``idlm`` (a causal LM made introspective:
    it needs a shifted causal LM, never LLaDA or a full-attention diffusion model), else ``diffusion``."""
    model.train()
    if objective == "idlm" and (model.is_llada or not model.facts.causal or not model.facts.shifted):
        kind = ("a LLaDA model (bidirectional attention, unshifted logits)" if model.is_llada else
                "a diffusion model (full attention)")
        raise DLMError(f"{path} is {kind}; --objective idlm makes a causal LM introspective (strictly causal "
                       "attention, logit shift): --init a causal LM such as tiny-ar or smollm2-135m-instruct, "
                       "or an idlm model")
    if objective == "scope" and model.facts.causal:
        raise DLMError(f"{path} is a causal LM; SCOPE post-trains a masked diffusion model (e.g. --init "
                       "smol-a2d-instruct)")
    if objective == "dsl" and model.facts.causal:
        raise DLMError(f"{path} is a causal LM; DSL adapts a masked diffusion model: adapt it first (--objective "
                       "a2d, then mdm SFT) and train DSL on that (e.g. --init smol-a2d-instruct)")
    label = objective if objective in CAUSAL_OBJECTIVES else "diffusion"
    if model.facts.causal and model.config.get("dlm_objective") != label:
        if model.is_llada:
            raise DLMError("a LLaDA model cannot be a causal LM")
        cfg = dict(model.config)
        cfg["dlm_objective"] = label
        tok = model.tokenizer
        if cfg.get("mask_token_id") is None and tok is not None and tok.mask_token_id is not None:
            cfg["mask_token_id"] = tok.mask_token_id
        vocab = model.net.get_output_embeddings().weight.shape[0]
        model = DiffusionLM(model.net, resolve_facts(cfg["model_type"], cfg, vocab, tok), cfg, tokenizer=tok,
                            path=model.path)
    elif objective == "causal" and not model.facts.causal:
        raise DLMError(f"{path} is a diffusion model; the causal objective needs a causal LM (dlm_objective: causal)")
    if objective != "causal" and model.facts.mask_id is None:
        raise DLMError(f"{path} has no mask token; add one to its tokenizer/config before diffusion training")
    return model


def training_memory(model: DiffusionLM, seq_len: int, batch_size: int, gradient_checkpointing: bool) -> dict:
    """Estimated bytes of one training micro-step: the weights, a gradient per trainable parameter,
    AdamW's two fp32 states per trainable parameter, and the activations of a (batch_size, seq_len)
    forward and backward (:func:`dlm.resources.forward_bytes`; an idlm model runs [x_t | x_0], twice
    ``seq_len``). Parameter counts included."""
    from dlm.models.lengths import model_dims

    if model.config.get("dlm_objective") == "idlm":
        seq_len *= 2
    params = list(model.parameters())  # the network, and a DSL model's noise embedding and converter
    trainable = [p for p in params if p.requires_grad]
    dims = model_dims(model)
    if gradient_checkpointing:  # one layer's activations at a time, plus each layer's input (B, L, d_model)
        inputs = dims["n_layers"] * batch_size * seq_len * dims["d_model"] * 4
        acts = forward_bytes(batch_size, seq_len, **dims) + inputs
    else:
        acts = forward_bytes(batch_size, seq_len, training=True, **dims)
    if model.dsl is not None:  # the converter's fp32 logits, softmax and its gradient over V + 1 slots per position
        acts += 3 * 4 * batch_size * seq_len * (model.dsl.vocab_size + 1)
    est = {"parameters": sum(p.numel() for p in params), "trainable": sum(p.numel() for p in trainable),
           "weights": sum(p.numel() * p.element_size() for p in params),
           "gradients": sum(p.numel() * p.element_size() for p in trainable),
           "optimizer": 8 * sum(p.numel() for p in trainable), "activations": acts}
    est["total"] = est["weights"] + est["gradients"] + est["optimizer"] + acts
    return est


def check_training_length(model: DiffusionLM, seq_len: int, batch_size: int, gradient_checkpointing: bool,
                          device, new: bool) -> str:
    """Refuse a ``seq_len`` past the positions the model declares, and a micro-step that cannot fit
    in ``device``'s free memory (:func:`training_memory`), before any data is tokenised. Returns the
    estimate as a line for the user."""
    limit = model.facts.max_length
    if limit is not None and seq_len > limit:
        if new:
            raise DLMError(f"--seq-len {seq_len} exceeds the {limit} positions of the new model; "
                           f"raise --max-positions or lower --seq-len")
        raise DLMError(f"--seq-len {seq_len} exceeds the {limit} positions {model.path} declares "
                       f"(config.json {model.facts.max_length_field})")
    est = training_memory(model, seq_len, batch_size, gradient_checkpointing)
    require_memory(est["total"], device, f"training on {batch_size} x {seq_len} tokens per micro-step",
                   hint="lower --batch-size (raise --grad-accum to keep the batch) or --seq-len, "
                        "or pass --gradient-checkpointing" + ("" if new or est["trainable"] < est["parameters"] else
                                                              ", or train a LoRA adapter (--lora RANK)"))
    free = available_bytes(device)
    return (f"dlm train: memory estimate for {batch_size} x {seq_len} tokens per micro-step: "
            f"{_count(est['parameters'])} parameters, {_count(est['trainable'])} trainable; weights "
            f"{format_bytes(est['weights'])} + gradients {format_bytes(est['gradients'])} + AdamW state "
            f"{format_bytes(est['optimizer'])} + activations {format_bytes(est['activations'])}"
            f"{' (gradient checkpointing)' if gradient_checkpointing else ''} = {format_bytes(est['total'])}"
            + (f" of {format_bytes(free)} free" if free is not None else ""))


def _count(n: int) -> str:
    """1234567 -> '1.23M'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)
