"""Memory checks before long or large work: estimate what a run needs, refuse what cannot fit.

``forward_bytes`` is a deliberately simple upper-bound estimate of one forward pass of a
transformer over a (batch, length) canvas (attention scores, the additive mask, activations and
logits in float32); ``require_memory`` compares an estimate with what the device has free and
raises a :class:`DLMError` naming both numbers, so a too-long ``--seq-len`` or ``--gen-length``
fails in a second instead of being OOM-killed minutes later.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dlm.errors import DLMError


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _cgroup_free() -> int | None:
    """Bytes left under this process's cgroup v2 memory limit, if it has one. Page cache the
    kernel can drop (``inactive_file``, e.g. a checkpoint just read) counts as free."""
    root = Path("/sys/fs/cgroup")
    try:
        raw = (root / "memory.max").read_text().strip()
        if raw == "max":
            return None
        used = int((root / "memory.current").read_text().strip())
        for line in (root / "memory.stat").read_text().splitlines():
            if line.startswith("inactive_file "):
                used -= int(line.split()[1])
        return max(0, int(raw) - max(used, 0))
    except (OSError, ValueError, IndexError):
        return None


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Free memory on ``device`` (RAM available to this process on CPU, free memory on a GPU), or None
    when it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    cgroup = _cgroup_free()
    if cgroup is not None:
        avail = cgroup if avail is None else min(avail, cgroup)
    return avail


def forward_bytes(batch: int, length: int, d_model: int, n_heads: int, n_layers: int, vocab: int,
                  mlp_hidden: int | None = None, training: bool = False, dtype_bytes: int = 4) -> int:
    """Estimated peak bytes of one forward pass (plus backward when ``training``).

    Inference holds one layer at a time: the additive mask (B, 1, L, L) and the layer's activations
    in the model's dtype (``dtype_bytes``), one head's attention scores (B, 1, L, L) in float32 (SDPA
    kernels go head by head) and the logits (B, L, V) twice in float32 (logits and softmax).
    Training keeps every layer's activations and all heads' attention probabilities for backward.
    Measured on CPU it is 1.3-3x above the real peak: it refuses only what clearly cannot fit.
    """
    mlp_hidden = mlp_hidden or 4 * d_model
    f32 = 4
    mask = batch * length * length * dtype_bytes
    acts = batch * length * (8 * d_model + 3 * mlp_hidden) * dtype_bytes
    logits = batch * length * vocab * f32 * 2
    if training:
        probs = batch * n_heads * length * length * f32
        return n_layers * (probs + acts) + mask + logits * 2
    return mask + batch * length * length * f32 + acts + logits


def require_memory(needed: int, device: torch.device | str, what: str, hint: str = "") -> None:
    """Raise a DLMError when ``needed`` bytes clearly exceed what ``device`` has free."""
    if os.environ.get("DLM_SKIP_MEMORY_CHECK") == "1":
        return
    avail = available_bytes(device)
    if avail is not None and needed > avail:
        raise DLMError(f"{what} needs about {format_bytes(needed)} of memory but only {format_bytes(avail)} is free "
                       f"on {torch.device(device)}" + (f"; {hint}" if hint else "") + " (the estimate is an upper bound; "
                       "DLM_SKIP_MEMORY_CHECK=1 runs anyway)")


def cpu_has_bf16() -> bool | None:
    """Whether this CPU has bf16 matrix instructions (AMX-BF16 or AVX512-BF16); None when unknown
    (not Linux). Without them PyTorch emulates bf16 matmuls, measured 64x slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return "amx_bf16" in flags or "avx512_bf16" in flags
