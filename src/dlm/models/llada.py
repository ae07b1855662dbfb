"""LLaDA: a LLaMA-style Transformer with bidirectional attention that predicts masked tokens.

A from-scratch implementation of the architecture of GSAI-ML/LLaDA-8B (`modeling_llada.py`, the
2025-10 version that honours ``attention_mask``), readable in one file. Parameter names match the
original checkpoints exactly (``model.transformer.wte.weight``, ``model.transformer.blocks.N.q_proj.weight``
...), so released weights load unchanged. Numerics follow the reference: RMSNorm in fp32, RoPE
(rotate-half, positions 0..L-1 including left padding, or the given ``position_ids``) in fp32, SDPA
with an additive padding bias of ``finfo(float32).min`` on padded keys, SwiGLU MLP where ``ff_proj``
is the gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from dlm.errors import CheckpointError
from dlm.models.kv_cache import CanvasKV, LayerKV
from dlm.validation import type_problem

_ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}


@dataclass
class LLaDAConfig:
    """The fields of LLaDA's ``config.json`` that change the computation."""

    d_model: int = 4096
    n_heads: int = 32
    n_kv_heads: int | None = None
    n_layers: int = 32
    mlp_hidden_size: int | None = None
    mlp_ratio: int = 4
    vocab_size: int = 126464
    embedding_size: int | None = None
    max_sequence_length: int = 4096
    rope_theta: float = 500000.0
    rope_full_precision: bool = True
    rms_norm_eps: float = 1e-5
    activation_type: str = "silu"
    include_bias: bool = False
    include_qkv_bias: bool = False
    bias_for_layer_norm: bool | None = None
    layer_norm_with_affine: bool = True
    weight_tying: bool = False
    input_emb_norm: bool = False
    scale_logits: bool = False
    mask_token_id: int | None = 126336
    eos_token_id: int | None = 126081
    pad_token_id: int | None = 126081
    # Fields below are validated (only the values LLaDA uses are implemented) but not stored.
    multi_query_attention: bool | None = None

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        if self.multi_query_attention:
            return 1
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def hidden_size(self) -> int:
        return self.mlp_hidden_size if self.mlp_hidden_size is not None else self.mlp_ratio * self.d_model

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and columns of the logits (``embedding_size`` when set)."""
        return self.embedding_size or self.vocab_size

    @property
    def norm_bias(self) -> bool:
        return self.include_bias if self.bias_for_layer_norm is None else self.bias_for_layer_norm

    # Values of fields that this implementation does not support -> what LLaDA uses.
    _REQUIRED = {
        "block_type": "llama",
        "layer_norm_type": "rms",
        "rope": True,
        "alibi": False,
        "attention_layer_norm": False,
        "block_group_size": 1,
    }

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> "LLaDAConfig":
        """Build from a parsed ``config.json``; unsupported values fail naming the field."""
        for key in ("d_model", "n_heads", "n_layers", "vocab_size"):
            if key not in raw:
                raise CheckpointError(f"{source}: required LLaDA field '{key}' is missing")
        for key, want in cls._REQUIRED.items():
            if key in raw and raw[key] is not None and raw[key] != want:
                raise CheckpointError(
                    f"{source}: field '{key}' = {raw[key]!r} is not supported (dlm implements LLaDA's {want!r})"
                )
        names = {f.name for f in fields(cls)}
        for f in fields(cls):
            if f.name in raw:
                _check_field(f.name, raw[f.name], str(f.type), source)
        cfg = cls(**{k: v for k, v in raw.items() if k in names})
        if cfg.activation_type not in _ACTIVATIONS:
            raise CheckpointError(
                f"{source}: field 'activation_type' = {cfg.activation_type!r} is not supported "
                f"(supported: {', '.join(sorted(_ACTIVATIONS))})"
            )
        if cfg.d_model % cfg.n_heads != 0:
            raise CheckpointError(f"{source}: field 'd_model' ({cfg.d_model}) is not divisible by n_heads ({cfg.n_heads})")
        if cfg.n_heads % cfg.kv_heads != 0:
            raise CheckpointError(f"{source}: field 'n_kv_heads' ({cfg.kv_heads}) does not divide n_heads ({cfg.n_heads})")
        if cfg.padded_vocab_size < cfg.vocab_size:
            raise CheckpointError(f"{source}: field 'embedding_size' is smaller than vocab_size")
        return cfg


_POSITIVE = {"d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size", "mlp_ratio", "vocab_size",
             "embedding_size", "max_sequence_length", "rope_theta", "rms_norm_eps"}


def _check_field(name: str, value: Any, kind: str, source: str) -> None:
    """Type-check one config field (``kind`` is the dataclass annotation as a string)."""
    if value is None and "None" in kind:
        return
    bad = type_problem(value, kind)
    if bad is None and name in _POSITIVE and value <= 0:
        bad = "positive"
    if bad is not None:
        raise CheckpointError(f"{source}: field '{name}' = {value!r} must be {bad}")


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, affine: bool, bias: bool):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size)) if affine else None
        self.bias = nn.Parameter(torch.zeros(size)) if affine and bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., D)
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        h = h.to(dtype)
        if self.weight is None:
            return h
        h = self.weight * h
        return h + self.bias if self.bias is not None else h


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_tables(seq_len: int, head_dim: int, theta: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """sin, cos of shape (1, 1, seq_len, head_dim) in fp32 for positions 0..seq_len-1."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float) / head_dim))
    pos = torch.arange(seq_len, device=device, dtype=torch.float)
    freqs = torch.outer(pos, inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)[None, None]
    return angles.sin(), angles.cos()


class LLaDABlock(nn.Module):
    """Pre-norm block: x += attn(norm(x)); x += mlp(norm(x)). Bidirectional attention."""

    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.cfg = cfg
        qkv_bias = cfg.include_bias or cfg.include_qkv_bias
        kv_dim = cfg.kv_heads * cfg.head_dim
        self.attn_norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps, cfg.layer_norm_with_affine, cfg.norm_bias)
        self.ff_norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps, cfg.layer_norm_with_affine, cfg.norm_bias)
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, kv_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, kv_dim, bias=qkv_bias)
        self.attn_out = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.include_bias)
        self.ff_proj = nn.Linear(cfg.d_model, cfg.hidden_size, bias=cfg.include_bias)  # gate
        self.up_proj = nn.Linear(cfg.d_model, cfg.hidden_size, bias=cfg.include_bias)
        self.ff_out = nn.Linear(cfg.hidden_size, cfg.d_model, bias=cfg.include_bias)
        self.act = _ACTIVATIONS[cfg.activation_type]

    def attention(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], bias: torch.Tensor | None,
                  kv: LayerKV | None = None) -> torch.Tensor:
        cfg = self.cfg
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, cfg.n_heads, cfg.head_dim).transpose(1, 2)  # (B, H, L, hd)
        k = self.k_proj(x).view(B, L, cfg.kv_heads, cfg.head_dim).transpose(1, 2)  # (B, Hkv, L, hd)
        v = self.v_proj(x).view(B, L, cfg.kv_heads, cfg.head_dim).transpose(1, 2)  # (B, Hkv, L, hd)
        sin, cos = rope
        q_, k_ = (q.float(), k.float()) if cfg.rope_full_precision else (q, k)
        sin, cos = sin.type_as(q_), cos.type_as(q_)
        q = ((q_ * cos + rotate_half(q_) * sin).to(q_.dtype)).type_as(q)
        k = ((k_ * cos + rotate_half(k_) * sin).to(k_.dtype)).type_as(k)
        if kv is not None:  # keys and values of the cached canvas (see dlm.models.kv_cache)
            k, v = kv.update(k, v)  # (B, Hkv, Lk, hd)
        if cfg.kv_heads != cfg.n_heads:
            rep = cfg.n_heads // cfg.kv_heads
            k = k.repeat_interleave(rep, dim=1, output_size=cfg.n_heads)
            v = v.repeat_interleave(rep, dim=1, output_size=cfg.n_heads)
        if bias is not None and bias.dtype != q.dtype:
            bias = bias.to(q.dtype).clamp_min(torch.finfo(q.dtype).min)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=False)  # (B, H, L, hd)
        return self.attn_out(att.transpose(1, 2).contiguous().view(B, L, cfg.d_model))

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], bias: torch.Tensor | None,
                kv: LayerKV | None = None) -> torch.Tensor:
        x = x + self.attention(self.attn_norm(x), rope, bias, kv)
        h = self.ff_norm(x)
        return x + self.ff_out(self.act(self.ff_proj(h)) * self.up_proj(h))


class LLaDATransformer(nn.Module):
    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.cfg = cfg
        modules: dict[str, nn.Module] = {
            "wte": nn.Embedding(cfg.padded_vocab_size, cfg.d_model),
            "blocks": nn.ModuleList(LLaDABlock(cfg) for _ in range(cfg.n_layers)),
            "ln_f": RMSNorm(cfg.d_model, cfg.rms_norm_eps, cfg.layer_norm_with_affine, cfg.norm_bias),
        }
        if not cfg.weight_tying:
            modules["ff_out"] = nn.Linear(cfg.d_model, cfg.padded_vocab_size, bias=cfg.include_bias)
        self.transformer = nn.ModuleDict(modules)


@dataclass
class DenoiserOutput:
    logits: torch.Tensor  # (B, L, V)


def padding_bias(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, L) 1/0 mask -> additive fp32 key bias (B, 1, 1, L), or None when nothing is padded."""
    if attention_mask is None or bool((attention_mask != 0).all()):
        return None
    keep = attention_mask.to(torch.float)[:, None, None, :]
    return (1.0 - keep) * torch.finfo(torch.float).min


class LLaDAModelLM(nn.Module):
    """LLaDA mask predictor: ``model(input_ids, attention_mask).logits`` -> (B, L, V)."""

    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.config = cfg
        self.model = LLaDATransformer(cfg)
        self.gradient_checkpointing = False
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _rope(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """sin/cos (1, 1, seq_len, head_dim). Like the reference, the table is computed once on the
        CPU for max(max_sequence_length, seq_len) positions and sliced, so values match it on any device."""
        key = str(device)
        cached = self._rope_cache.get(key)
        if cached is None or cached[0].shape[2] < seq_len:
            n = max(self.config.max_sequence_length, seq_len)
            sin, cos = rope_tables(n, self.config.head_dim, self.config.rope_theta, torch.device("cpu"))
            cached = self._rope_cache[key] = (sin.to(device), cos.to(device))
        return cached[0][:, :, :seq_len], cached[1][:, :, :seq_len]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, L)
        attention_mask: torch.Tensor | None = None,  # (B, L), 1 = real token, 0 = padding
        inputs_embeds: torch.Tensor | None = None,  # (B, L, D), replaces the embedding lookup
        attention_bias: torch.Tensor | None = None,  # (B or 1, 1, L, L) additive, e.g. a causal mask
        logits_from: int = 0,  # compute logits only for positions >= logits_from
        logits_to: int | None = None,  # ... and < logits_to (None: to the end)
        kv: CanvasKV | None = None,  # K/V cache: input_ids are the canvas chunk starting at kv.start
        position_ids: torch.Tensor | None = None,  # (B or 1, L) or (L,) RoPE positions; None = start .. start + L - 1
    ) -> DenoiserOutput:
        cfg, tr = self.config, self.model.transformer
        x = tr.wte(input_ids) if inputs_embeds is None else inputs_embeds  # (B, L, D)
        if cfg.input_emb_norm:
            x = x * (cfg.d_model**0.5)
        B, L, _ = x.shape
        start = 0 if kv is None else kv.start  # canvas position of input position 0
        keys = L if attention_mask is None else attention_mask.shape[1]  # (the cached canvas: attention_mask covers it)
        bias = padding_bias(attention_mask)  # (B, 1, 1, keys) or None
        if attention_bias is not None:
            bias = attention_bias.float() if bias is None else attention_bias.float() + bias
        if bias is not None:  # the reference adds to a (1, 1, L, L) zero bias; keep values finite
            bias = (bias + torch.zeros(1, 1, L, keys, device=x.device)).clamp_min(torch.finfo(torch.float).min)
        if position_ids is None:
            sin, cos = self._rope(start + L, x.device)
            rope = (sin[:, :, start:], cos[:, :, start:])  # positions start .. start + L - 1
        else:  # rows of the same table, gathered (each id must be < max(L, max_sequence_length))
            if kv is not None:
                raise ValueError("position_ids cannot be combined with a K/V cache")
            sin, cos = self._rope(max(L, self.config.max_sequence_length), x.device)
            ids = position_ids.reshape(-1, L) if position_ids.dim() == 1 else position_ids  # (B or 1, L)
            rope = (sin[0, 0][ids][:, None], cos[0, 0][ids][:, None])  # (B or 1, 1, L, head_dim)
        for i, block in enumerate(tr.blocks):
            if kv is not None:
                x = block(x, rope, bias, kv.layer(i))
            elif self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, rope, bias, use_reentrant=False)
            else:
                x = block(x, rope, bias)
        if logits_from or logits_to is not None:
            x = x[:, logits_from:logits_to]
        x = tr.ln_f(x)
        logits = F.linear(x, tr.wte.weight) if cfg.weight_tying else tr.ff_out(x)  # (B, logits_to - logits_from, V)
        if cfg.scale_logits:
            logits = logits * (1 / math.sqrt(cfg.d_model))
        return DenoiserOutput(logits=logits)

    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None) -> None:
        """Random init for training from scratch (normal(0, std) linears, residual outputs scaled)."""
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
                continue
            residual = name.endswith("attn_out.weight") or (".blocks." in name and name.endswith("ff_out.weight"))
            s = std / math.sqrt(2 * self.config.n_layers) if residual else std
            with torch.no_grad():
                p.normal_(0.0, s, generator=generator)
