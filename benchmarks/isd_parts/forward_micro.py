"""The forward micro-benchmark: one forward of 2N - 1 new slots against one single-token forward,
both after a KV cache of a prompt (what one ISD round costs in AR steps)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from dlm.sampling.autoregressive import kv_cache_kwargs

from .rows import sync


def truncate(cache, length: int) -> None:
    """Keep the first ``length`` cached positions of every layer (as the isd sampler re-packs its
    cache: ``DynamicCache.crop``'s meaning differs between transformers releases)."""
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[..., :length, :], layer.values[..., :length, :]


@torch.no_grad()
def forward_micro(model, prompt: list[int], strides: list[int], batch_sizes: list[int], repeats: int,
                  warmup: int) -> dict[str, Any]:
    """Median seconds of one forward of W = 2N - 1 mask slots and of one single-token forward, each
    after a KV cache of ``prompt`` (cropped back after every timed forward), per batch size; the
    widths are timed in turn within every repeat so that load changes hit them alike."""
    net, dev = model.net, model.device
    P, mask_id = len(prompt), model.facts.resolve_mask_id()
    token = prompt[-1] if prompt[-1] != mask_id else 0  # a real token for the AR step
    widths = [1] + [2 * n - 1 for n in strides]
    out: dict[str, Any] = {"prompt_length": P, "repeats": repeats, "warmup_forwards": warmup, "by_batch_size": {}}
    was_training = model.training
    model.eval()
    try:
        for bs in batch_sizes:
            ids = torch.tensor([prompt] * bs, device=dev)
            cache = kv_cache_kwargs(net)
            kv = next(iter(cache.values()))
            net(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(P, device=dev)[None]
                .expand(bs, -1), use_cache=True, logits_to_keep=1, **cache)
            times: dict[int, list[float]] = {w: [] for w in widths}
            for k in range(warmup + repeats):
                for w in widths:
                    inp = torch.full((bs, w), mask_id if w > 1 else token, dtype=torch.long, device=dev)
                    pos = (P + torch.arange(w, device=dev))[None].expand(bs, -1)
                    attn = torch.ones(bs, P + w, dtype=torch.long, device=dev)
                    sync(model)
                    t0 = time.perf_counter()
                    net(input_ids=inp, attention_mask=attn, position_ids=pos, use_cache=True, **cache)
                    sync(model)
                    if k >= warmup:
                        times[w].append(time.perf_counter() - t0)
                    truncate(kv, P)
            single = statistics.median(times[1])
            out["by_batch_size"][str(bs)] = {
                "single_token_seconds": single,
                "strides": {str(n): {"slots": 2 * n - 1, "seconds": statistics.median(times[2 * n - 1]),
                                     "ratio_to_single_token": statistics.median(times[2 * n - 1]) / single}
                            for n in strides}}
    finally:
        model.train(was_training)
    return out
