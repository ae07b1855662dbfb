"""Memory checks before long or large work: estimate what a run needs, refuse what cannot fit.

``forward_bytes`` is a deliberately simple upper-bound estimate of one forward pass of a
transformer over a (batch, length) canvas (attention scores, the additive mask, activations and
logits in float32); ``require_memory`` compares an estimate with what the device has free and
raises a :class:`DLMError` naming both numbers, so a too-long ``--seq-len`` or ``--gen-length``
fails in a second instead of being OOM-killed minutes later.
"""

from __future__ import annotations

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
    """Bytes left under this process's cgroup v2 memory limit, if it has one."""
    limit, current = Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")
    try:
        raw = limit.read_text().strip()
        if raw == "max":
            return None
        return max(0, int(raw) - int(current.read_text().strip()))
    except (OSError, ValueError):
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
                  mlp_hidden: int | None = None, training: bool = False) -> int:
    """Estimated peak bytes of one forward pass (plus backward when ``training``) in float32.

    Inference holds one layer at a time: attention scores (B, H, L, L) twice (scores and softmax),
    the additive mask (B, 1, L, L), a layer's activations and the logits (B, L, V) twice (logits and
    softmax). Training keeps every layer's activations and scores for backward.
    """
    mlp_hidden = mlp_hidden or 4 * d_model
    f32 = 4
    scores = batch * n_heads * length * length * f32 * 2
    mask = batch * length * length * f32
    acts = batch * length * (8 * d_model + 3 * mlp_hidden) * f32
    logits = batch * length * vocab * f32 * 2
    if training:
        return n_layers * (scores + acts) + mask + logits * 2
    return scores + mask + acts + logits


def require_memory(needed: int, device: torch.device | str, what: str, hint: str = "") -> None:
    """Raise a DLMError when ``needed`` bytes clearly exceed what ``device`` has free."""
    avail = available_bytes(device)
    if avail is not None and needed > avail:
        raise DLMError(f"{what} needs about {format_bytes(needed)} of memory but only {format_bytes(avail)} is free "
                       f"on {torch.device(device)}" + (f"; {hint}" if hint else ""))
