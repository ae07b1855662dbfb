"""Key/value caches over the denoising canvas (Fast-dLLM's prefix and dual caches).

A diffusion model attends both ways, so a cached K/V is only an approximation of the keys a full
forward would compute: Fast-dLLM (NVlabs/Fast-dLLM ``v1/llada``) refreshes the cache with one full
pass at the start of every block and then runs only part of the canvas against it:

* ``fill``: the whole visible canvas; its K/V are stored for every layer;
* ``prefix``: the positions from the block start to the end of the canvas, against the cached
  K/V of the positions before the block (frozen; the later positions' K/V are recomputed);
* ``dual``: only the block, against the cached K/V of every position; the block's new K/V
  replace its slots in the cache in place (prefix and suffix stay as the last full pass left them).

:meth:`dlm.models.diffusion_lm.DiffusionLM.cached_forward` runs these modes for both kinds of
model dlm has: its own LLaDA (:class:`CanvasKV`, post-RoPE keys per layer) and shifted
``transformers`` models (:class:`ReplacingCache`, a ``DynamicCache`` that can write in place).
Keys are cached after RoPE; Fast-dLLM caches them before RoPE and re-rotates all of them every
pass, which gives the same numbers (RoPE of a key depends on its own position only).

Shifted models read position ``i``'s prediction at position ``i - 1``, so the chunk they run starts
one position before the block (``shift`` = 1): its K/V are refreshed with the block's.
"""

from __future__ import annotations

import torch

MODES = ("fill", "prefix", "dual")


class LayerKV:
    """One layer's view of a :class:`CanvasKV`, handed to :class:`dlm.models.llada.LLaDABlock`."""

    def __init__(self, cache: "CanvasKV", layer: int):
        self.cache, self.layer = cache, layer

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """New post-RoPE k, v (B, Hkv, T, hd) of the chunk -> the keys and values it attends to."""
        return self.cache.update(self.layer, k, v)


class CanvasKV:
    """dlm LLaDA's cache: post-RoPE keys and values (B, Hkv, Lc, hd) of each layer.

    ``mode`` and ``start`` say what the next forward does (set by ``cached_forward``)."""

    def __init__(self):
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.mode = "fill"
        self.start = 0  # canvas position of the chunk's first token

    @property
    def length(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def layer(self, i: int) -> LayerKV:
        return LayerKV(self, i)

    def crop(self, length: int) -> None:
        self.keys = [k[:, :, :length] for k in self.keys]
        self.values = [v[:, :, :length] for v in self.values]

    def update(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "fill":
            if i == 0:
                self.keys, self.values = [], []
            self.keys.append(k)
            self.values.append(v)
            return k, v
        if self.mode == "prefix":  # cached [0, start) + the chunk; the cache itself stays frozen
            return torch.cat((self.keys[i], k), dim=2), torch.cat((self.values[i], v), dim=2)
        # dual: the chunk's K/V replace its slots, the queries see the whole canvas
        end = self.start + k.shape[2]
        self.keys[i][:, :, self.start:end] = k
        self.values[i][:, :, self.start:end] = v
        return self.keys[i], self.values[i]


def replacing_cache_class():
    """:class:`ReplacingCache`, built on first use so that importing dlm does not import transformers."""
    global _ReplacingCache
    if _ReplacingCache is None:
        from transformers import DynamicCache

        class ReplacingCache(DynamicCache):
            """A ``DynamicCache`` whose ``update`` writes the chunk's K/V into the slots
            ``[replace_at, replace_at + T)`` in place (dual cache) while ``replace_at`` is set;
            otherwise it appends, as ``DynamicCache`` does (fill and prefix passes)."""

            replace_at: int | None = None

            def update(self, key_states, value_states, layer_idx, *args, **kwargs):
                if self.replace_at is None:
                    return super().update(key_states, value_states, layer_idx, *args, **kwargs)
                layer = self.layers[layer_idx]
                a, b = self.replace_at, self.replace_at + key_states.shape[-2]
                layer.keys[:, :, a:b] = key_states
                layer.values[:, :, a:b] = value_states
                return layer.keys, layer.values

        _ReplacingCache = ReplacingCache
    return _ReplacingCache


_ReplacingCache = None


def new_hf_cache(net) -> tuple[str, object]:
    """(keyword, empty :class:`ReplacingCache`) for the ``transformers`` model ``net``: the keyword
    its forward takes the cache under (``cache`` in recent 5.x releases, else ``past_key_values``)."""
    import inspect

    get_base = getattr(net, "get_base_model", None)  # a peft PeftModel passes the keywords on to its base
    params = inspect.signature((get_base() if get_base is not None else net).forward).parameters
    name = "cache" if "cache" in params else "past_key_values"
    cls = replacing_cache_class()
    try:
        return name, cls(config=net.config)
    except TypeError:  # releases whose DynamicCache takes no config
        return name, cls()


def crop_hf_cache(cache, length: int) -> None:
    """Keep the first ``length`` positions of every layer of a ``DynamicCache`` (whose own ``crop``
    changed meaning between 5.x releases)."""
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys = layer.keys[:, :, :length]
            layer.values = layer.values[:, :, :length]
