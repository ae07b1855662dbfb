"""The model runner: many requests' forward passes as few batched forwards.

Each running request's sampler runs unchanged (``dlm.generate`` on a batch of one) against a
:class:`ModelProxy`. The proxy turns every forward pass the sampler makes into a :class:`Call`
and blocks until the engine's step has run it. :func:`execute` runs one step's calls, in groups:

* ``"plain"`` - ``model(x, attention_mask, logits_from[, inputs_embeds])``: the denoising pass of
  llada, dream, fast without a cache, dsl (embeddings) and CFG. The calls' canvases are
  right-padded to the longest (attention is bidirectional: the padding is masked as keys and
  every token keeps its position) and run as one forward; each request gets its rows and the
  logit positions it asked for.
  DSL passes (embeddings) batch only with canvases of their own length (see ``group_key``).
* ``"hf"`` - a causal network's pass with a ``transformers`` KV cache (``isd``, ``ar``): the
  requests' caches are merged (each row's past right-aligned before the new slots, gaps masked),
  run as one forward, and each request's cache is given back its rows with the new slots' K/V.
  Prefills (empty caches) batch together, decode rounds by their number of new slots.
* ``"serial"`` - anything else (Fast-dLLM's canvas caches): run one after another within the step.

A group of one runs exactly as the request would alone. In a batch only floating-point rounding
differs (padding is masked), so at T = 0 outputs equal the request's own unless two candidates
tie to the last bits.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

import torch

from dlm.engine.request import Cancelled, Request


@dataclass
class Call:
    request: Request
    kind: str  # "plain" | "hf" | "serial"
    args: dict[str, Any] = field(default_factory=dict)
    fn: Callable[[], Any] | None = None  # "serial": what to run
    result: Any = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def rows(self) -> int:
        x = self.args.get("input_ids")
        return int(x.shape[0]) if x is not None else int(self.args["inputs_embeds"].shape[0])


class ModelProxy:
    """What a request's sampler sees as its model: the real model, except that forward passes go
    through the engine (``post`` blocks until the call has run) and eval()/train() do nothing (the
    engine holds the model in eval mode for every request)."""

    training = False

    def __init__(self, model, post: Callable[[Call], Any], request: Request):
        self._model, self._post, self._request = model, post, request
        self.net = NetProxy(model.net, post, request)

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def __call__(self, input_ids=None, attention_mask=None, attention_bias=None, logits_from: int = 0,
                 inputs_embeds=None, position_ids=None):
        if attention_bias is not None or position_ids is not None:  # a custom pattern (wino): run on its own
            return self._post(Call(self._request, "serial", fn=lambda: self._model(
                input_ids, attention_mask=attention_mask, attention_bias=attention_bias,
                logits_from=logits_from, inputs_embeds=inputs_embeds, position_ids=position_ids)))
        logits = self._post(Call(self._request, "plain", dict(input_ids=input_ids, attention_mask=attention_mask,
                                                              logits_from=logits_from, inputs_embeds=inputs_embeds)))
        return SimpleNamespace(logits=logits)

    def cached_forward(self, *args, **kwargs):
        return self._post(Call(self._request, "serial", fn=lambda: self._model.cached_forward(*args, **kwargs)))


class NetProxy:
    """``model.net`` as the causal samplers (``isd``, ``ar``) call it with a KV cache."""

    def __init__(self, net, post: Callable[[Call], Any], request: Request):
        self._net, self._post, self._request = net, post, request

    def __getattr__(self, name: str):
        return getattr(self._net, name)

    def __call__(self, **kwargs):
        key = "cache" if "cache" in kwargs else "past_key_values"
        cache = kwargs.get(key)
        mergeable = (cache is not None and hasattr(cache, "layers") and kwargs.get("input_ids") is not None
                     and kwargs.get("position_ids") is not None and kwargs.get("attention_mask") is not None
                     and kwargs["attention_mask"].dim() == 2)
        if not mergeable:
            return self._post(Call(self._request, "serial", fn=lambda: self._net(**kwargs)))
        return SimpleNamespace(logits=self._post(Call(self._request, "hf", dict(kwargs, cache_key=key))))


def group_key(call: Call, separate_prefill: bool) -> tuple:
    prefill = separate_prefill and not call.request.first_call_done
    if call.kind == "plain":
        embeds = call.args["inputs_embeds"]
        # DSL's SDE carries continuous state across steps and amplifies rounding: its passes batch
        # only with canvases of the same length (no padding), which leaves its rows bit-equal
        return ("plain", None if embeds is None else embeds.shape[1], prefill)
    if call.kind == "hf":
        # a prefill (empty cache) pads only with other prefills: merged with decode rounds of a few
        # slots it would pad every row to the prompt's length; decode rounds batch by their width
        fresh = call.args[call.args["cache_key"]].get_seq_length() == 0
        return ("hf", call.args["cache_key"], "prefill" if fresh else call.args["input_ids"].shape[1], prefill)
    return ("serial", id(call))


def execute(model, calls: list[Call], separate_prefill: bool, on_forward=None) -> None:
    """Run one step's calls in batched groups and wake their requests."""
    groups: dict[tuple, list[Call]] = {}
    for call in calls:
        if call.request.cancelled.is_set():
            call.error = Cancelled("cancelled")
            call.done.set()
            continue
        groups.setdefault(group_key(call, separate_prefill), []).append(call)
    for key, group in groups.items():
        start = time.perf_counter()
        try:
            if key[0] == "plain":
                results = run_plain(model, group)
            elif key[0] == "hf":
                results = run_hf(model.net, group)
            else:
                results = [group[0].fn()]
            for call, result in zip(group, results):
                call.result = result
        except Exception as e:  # a failed forward fails the requests in it, never the engine
            for call in group:
                call.error = e
        if on_forward is not None:
            on_forward(sum(c.rows if c.kind != "serial" else 1 for c in group), time.perf_counter() - start)
        for call in group:
            call.request.first_call_done = True
            call.done.set()


def run_plain(model, calls: list[Call]) -> list[torch.Tensor]:
    """One forward for several denoising passes: each call's logits (b, L - logits_from, V).

    Canvases are right-padded: attention is bidirectional and the padding is masked as keys, so a
    row's tokens keep their positions (LLaDA's RoPE counts left padding) and see what they see alone."""
    if len(calls) == 1:
        return [model(**calls[0].args).logits]
    embeds = calls[0].args["inputs_embeds"] is not None
    tensors = [c.args["inputs_embeds" if embeds else "input_ids"] for c in calls]
    L = max(t.shape[1] for t in tensors)
    rows = sum(t.shape[0] for t in tensors)
    ref = tensors[0]
    x = ref.new_zeros((rows, L, ref.shape[2]) if embeds else (rows, L))  # padding: id 0 / zero vectors, masked
    mask = torch.zeros(rows, L, dtype=torch.long, device=ref.device)
    r = 0
    for call, t in zip(calls, tensors):
        b, n = t.shape[:2]
        x[r:r + b, :n] = t
        m = call.args["attention_mask"]
        mask[r:r + b, :n] = 1 if m is None else m
        r += b
    padded = any(c.args["attention_mask"] is not None for c in calls) or any(t.shape[1] != L for t in tensors)
    lf = min(c.args["logits_from"] for c in calls)
    out = model(None if embeds else x, attention_mask=mask if padded else None, logits_from=lf,
                inputs_embeds=x if embeds else None).logits  # (rows, L - lf, V)
    results, r = [], 0
    for call, t in zip(calls, tensors):
        results.append(out[r:r + t.shape[0], call.args["logits_from"] - lf:t.shape[1] - lf])
        r += t.shape[0]
    return results


def run_hf(net, calls: list[Call]) -> list[torch.Tensor]:
    """One forward for several KV-cached causal passes; each request's cache gets its new K/V."""
    key = calls[0].args["cache_key"]
    if len(calls) == 1:
        args = {k: v for k, v in calls[0].args.items() if k != "cache_key"}
        return [net(**args).logits]
    caches = [c.args[key] for c in calls]
    ids = [c.args["input_ids"] for c in calls]
    past = [cache.get_seq_length() for cache in caches]
    S, T = max(past), max(t.shape[1] for t in ids)
    B = sum(t.shape[0] for t in ids)
    dev = ids[0].device
    input_ids = torch.zeros(B, T, dtype=torch.long, device=dev)
    mask = torch.zeros(B, S + T, dtype=torch.long, device=dev)
    positions = torch.zeros(B, T, dtype=torch.long, device=dev)
    keep, r = 0, 0
    for call, t, s in zip(calls, ids, past):
        b, n = t.shape
        am = call.args["attention_mask"]
        input_ids[r:r + b, T - n:] = t
        mask[r:r + b, S - s:S] = am[:, :s]
        mask[r:r + b, S + T - n:] = am[:, s:]
        positions[r:r + b, T - n:] = call.args["position_ids"]
        keep = max(keep, call.args.get("logits_to_keep") or n)
        r += b
    from dlm.sampling.autoregressive import kv_cache_kwargs

    merged = kv_cache_kwargs(net)[key]
    if S > 0:
        layers = next(c.layers for c, s in zip(caches, past) if s > 0)
        for i, proto in enumerate(layers):
            k = proto.keys.new_zeros(B, proto.keys.shape[1], S, proto.keys.shape[3])
            v = proto.values.new_zeros(B, proto.values.shape[1], S, proto.values.shape[3])
            r = 0
            for cache, s, t in zip(caches, past, ids):
                if s > 0:
                    k[r:r + t.shape[0], :, S - s:] = cache.layers[i].keys
                    v[r:r + t.shape[0], :, S - s:] = cache.layers[i].values
                r += t.shape[0]
            merged.update(k, v, i)
    extra = {k: v for k, v in calls[0].args.items()
             if k not in ("cache_key", key, "input_ids", "attention_mask", "position_ids", "logits_to_keep")}
    out = net(input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep,
              **extra, **{key: merged}).logits  # (B, keep, V)
    results, r = [], 0
    for call, cache, t, s in zip(calls, caches, ids, past):
        b, n = t.shape
        want = call.args.get("logits_to_keep") or n
        results.append(out[r:r + b, keep - want:])
        cols = torch.cat([torch.arange(S - s, S), torch.arange(S + T - n, S + T)]).to(dev)
        for i, layer in enumerate(merged.layers):
            k, v = layer.keys[r:r + b].index_select(2, cols), layer.values[r:r + b].index_select(2, cols)
            own = cache.layers[i]
            if not own.is_initialized:
                own.lazy_initialization(k, v)
            own.keys, own.values = k, v
        r += b
    return results
