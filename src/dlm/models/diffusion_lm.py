"""DiffusionLM: the one model object every sampler, loss and CLI command works with.

It wraps an architecture module (dlm's LLaDA, or a ``transformers`` causal LM run with full
attention) and exposes logits *aligned to positions*: ``logits[:, i]`` is the prediction for the
token at position ``i``. For shifted (AR-adapted) models the raw output at ``i - 1`` predicts
``i``, so the wrapper shifts right by one; position 0 then has no prediction of its own and must
hold a prompt token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from dlm.errors import DLMError
from dlm.models.kv_cache import MODES, CanvasKV, crop_hf_cache, new_hf_cache
from dlm.models.llada import DenoiserOutput, LLaDAModelLM
from dlm.models.registry import ModelFacts


def full_attention_bias(attention_mask: torch.Tensor | None, batch: int, seq_len: int, dtype: torch.dtype,
                        device: torch.device) -> torch.Tensor:
    """A 4-D additive mask (B, 1, L, L) that lets every position see every non-padded key."""
    bias = torch.zeros(batch, 1, seq_len, seq_len, dtype=dtype, device=device)
    if attention_mask is not None:
        pad = (attention_mask == 0)[:, None, None, :]  # (B, 1, 1, L)
        bias = bias.masked_fill(pad, torch.finfo(dtype).min)
    return bias


class DiffusionLM(nn.Module):
    """A mask predictor: ``model(input_ids, attention_mask=None).logits`` -> (B, L, V)."""

    def __init__(self, net: nn.Module, facts: ModelFacts, config: dict[str, Any], tokenizer: Any = None,
                 path: str | Path | None = None):
        super().__init__()
        self.net = net
        self.facts = facts
        self.config = config  # the raw config.json
        self.tokenizer = tokenizer
        self.path = str(path) if path is not None else None
        self.dsl = None  # DSL modules (dlm.models.dsl.DSLModules) of a continuous-denoising model

    def attach_dsl(self, dsl) -> None:
        """Give the model DSL modules (a noise embedding and a converter): it becomes a DSL model."""
        self.dsl = dsl.to(device=self.device)

    def _base_net(self) -> nn.Module:
        get_base = getattr(self.net, "get_base_model", None)  # a peft PeftModel (an adapter kept apart) wraps it
        return get_base() if get_base is not None else self.net

    def input_embeddings(self) -> nn.Embedding:
        """The backbone's token embedding (the lookup ``inputs_embeds`` replaces)."""
        net = self._base_net()
        return net.model.transformer.wte if isinstance(net, LLaDAModelLM) else net.get_input_embeddings()

    def output_head(self) -> nn.Module:
        """The layer that maps hidden states to logits (the input embedding when they are tied)."""
        net = self._base_net()
        if isinstance(net, LLaDAModelLM):
            tr = net.model.transformer
            return tr.wte if net.config.weight_tying else tr.ff_out
        return net.get_output_embeddings()

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    @property
    def is_llada(self) -> bool:
        return isinstance(self._base_net(), LLaDAModelLM)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def forward(
        self,
        input_ids: torch.Tensor | None,  # (B, L); None with inputs_embeds
        attention_mask: torch.Tensor | None = None,  # (B, L)
        attention_bias: torch.Tensor | None = None,  # (B or 1, 1, L, L) additive; None = full attention
        logits_from: int = 0,  # return logits only for positions >= logits_from: (B, L - logits_from, V)
        inputs_embeds: torch.Tensor | None = None,  # (B, L, D): vectors in place of the token embeddings (DSL)
        position_ids: torch.Tensor | None = None,  # (B or 1, L) positions; None = default_positions(attention_mask)
    ) -> DenoiserOutput:
        # position_ids number the *input* positions: for a shifted model the one at i is the position
        # of the hidden state at i, whose output becomes the aligned logits of position i + 1.
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if self.is_llada:
            return self.net(input_ids, attention_mask=attention_mask, attention_bias=attention_bias,
                            logits_from=logits_from, inputs_embeds=inputs_embeds, position_ids=position_ids)
        B, L = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        dtype = self.dtype
        device = (input_ids if input_ids is not None else inputs_embeds).device
        bias = full_attention_bias(attention_mask, B, L, dtype, device)
        if attention_bias is not None:
            bias = (bias + attention_bias.to(dtype)).clamp_min(torch.finfo(dtype).min)
        # shifted: aligned[i] = raw[i - 1] (i >= 1), aligned[0] = raw[0]
        first_raw = max(logits_from - 1, 0) if self.facts.shifted else logits_from
        # Positions count real tokens only, so left padding does not move them: required for
        # learned absolute positions (GPT-2 / DiffuGPT), harmless for RoPE (relative), and how
        # Dream numbers a padded batch.
        positions = None if attention_mask is None else (attention_mask.long().cumsum(-1) - 1).clamp_min(0)  # (B, L)
        if position_ids is not None:
            positions = position_ids.expand(B, L) if position_ids.dim() == 2 else position_ids.expand(B, -1)
        tokens = {"input_ids": input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
        raw = self.net(**tokens, attention_mask=bias, position_ids=positions, use_cache=False,
                       logits_to_keep=L - first_raw if first_raw else 0).logits  # (B, L - first_raw, V)
        if not self.facts.shifted:
            return DenoiserOutput(logits=raw)
        if logits_from == 0:
            return DenoiserOutput(logits=torch.cat([raw[:, :1], raw[:, :-1]], dim=1))
        return DenoiserOutput(logits=raw[:, :-1])

    def default_positions(self, attention_mask: torch.Tensor | None, batch: int, seq_len: int,
                          device: torch.device) -> torch.Tensor:
        """(B, L) the position ids :meth:`forward` gives a sequence when ``position_ids`` is None:
        0..L-1 for LLaDA (left padding included, as its reference numbers them); for ``transformers``
        nets the count of real tokens before each position (left padding does not move them)."""
        if self.is_llada or attention_mask is None:
            return torch.arange(seq_len, device=device)[None].expand(batch, -1)
        return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)

    # -- K/V caches over the canvas (dlm.models.kv_cache) --------------------------------------
    def new_cache(self):
        """An empty K/V cache for :meth:`cached_forward`."""
        return CanvasKV() if self.is_llada else new_hf_cache(self.net)

    def cached_forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None, cache, mode: str,
                       start: int, end: int) -> torch.Tensor:
        """Aligned logits (B, end - start, V) of canvas positions [start, end) with a K/V cache.

        ``x`` (B, Lv) is the visible canvas and ``attention_mask`` (B, Lv) its padding mask (or None).
        ``mode`` (see :mod:`dlm.models.kv_cache`): ``"fill"`` runs all of ``x`` and caches every
        position's K/V; ``"prefix"`` runs ``x[:, start - shift:]`` against the cached K/V before it
        (frozen); ``"dual"`` runs ``x[:, start - shift:end]`` against the whole cached canvas and writes
        its K/V into their slots. ``shift`` is 1 for shifted models (position i's logits come from
        i - 1), else 0. ``start`` >= 1 for shifted models (position 0 has no prediction of its own).
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "dual":
            cached = cache.length if self.is_llada else cache[1].get_seq_length()
            if cached != x.shape[1]:
                raise ValueError(f"a dual pass needs the K/V of the whole canvas ({x.shape[1]} positions, cached "
                                 f"{cached}): run a fill pass first")
        shift = 1 if self.facts.shifted else 0
        if shift and start < 1:
            raise ValueError("a shifted model has no prediction for position 0")
        q0 = 0 if mode == "fill" else start - shift  # first canvas position run
        q1 = end if mode == "dual" else x.shape[1]  # one past the last
        chunk = x[:, q0:q1]
        lo, hi = start - shift - q0, end - shift - q0  # rows of the chunk's raw output to keep
        if self.is_llada:
            if mode == "prefix" and cache.length > q0:
                cache.crop(q0)  # freeze the prefix: [0, block start)
            cache.mode, cache.start = mode, q0
            return self.net(chunk, attention_mask=attention_mask, logits_from=lo, logits_to=hi, kv=cache).logits
        name, hf_cache = cache
        if mode != "dual" and hf_cache.get_seq_length() > q0:
            crop_hf_cache(hf_cache, q0)  # fill: start empty; prefix: drop what the last prefix pass appended
        hf_cache.replace_at = q0 if mode == "dual" else None
        B, T = chunk.shape
        keys = q0 + T if mode != "dual" else x.shape[1]
        bias = torch.zeros(B, 1, T, keys, dtype=self.dtype, device=x.device)
        if attention_mask is not None:
            bias = bias.masked_fill((attention_mask[:, :keys] == 0)[:, None, None, :], torch.finfo(self.dtype).min)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0) if attention_mask is not None else \
            torch.arange(x.shape[1], device=x.device)[None].expand(B, -1)  # (B, Lv), as forward() numbers them
        keep = torch.arange(lo, hi, device=x.device)
        return self.net(input_ids=chunk, attention_mask=bias, position_ids=positions[:, q0:q1], use_cache=True,
                        logits_to_keep=keep, **{name: hf_cache}).logits

    # -- text helpers -------------------------------------------------------------------------
    def encode_prompt(self, text: str, chat: bool | None = None) -> list[int]:
        """Token ids of ``text``, wrapped in the chat template when the tokenizer has one."""
        tok = self._require_tokenizer()
        use_chat = bool(getattr(tok, "chat_template", None)) if chat is None else chat
        if use_chat:
            if not getattr(tok, "chat_template", None):
                raise DLMError(f"the tokenizer of {self.path or 'this model'} has no chat template")
            ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                          tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return [int(i) for i in ids]
        ids = tok(text, add_special_tokens=True)["input_ids"]
        if self.facts.shifted and not ids and self.facts.bos_id is not None:
            ids = [self.facts.bos_id]
        return [int(i) for i in ids]

    def decode(self, ids: list[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        tok = self._require_tokenizer()
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise DLMError(f"{self.path or 'this model'} has no tokenizer; pass token ids instead of text")
        return self.tokenizer
