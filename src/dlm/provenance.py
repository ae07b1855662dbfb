"""What every result file and model card records about the software and the machine."""

from __future__ import annotations

import platform
from pathlib import Path


def software_versions() -> dict[str, str]:
    import torch
    import transformers

    import dlm

    return {"dlm": dlm.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def file_sha256(path) -> str:
    """Full sha256 hex digest of a file's bytes (what ``sha256sum`` prints), read in chunks."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
