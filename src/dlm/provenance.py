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


def cached_file_sha256(path) -> str:
    """:func:`file_sha256`, remembered in ``cache_dir("digests")`` against the file's resolved path,
    size, mtime and inode, so a large base checkpoint is hashed once rather than at every load. Any
    change to the file (rewritten, replaced, touched) hashes it again; an unwritable cache only
    costs the hashing."""
    import hashlib
    import json
    import os
    from pathlib import Path

    from dlm.paths import cache_dir

    path = Path(path).resolve()
    st = path.stat()
    stamp = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
    record = cache_dir("digests") / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")
    try:
        saved = json.loads(record.read_text())
        if {k: saved.get(k) for k in stamp} == stamp and isinstance(saved.get("sha256"), str):
            return saved["sha256"]
    except (OSError, ValueError, AttributeError):
        pass
    digest = file_sha256(path)
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f".{record.name}.{os.getpid()}")
        tmp.write_text(json.dumps({**stamp, "sha256": digest}))
        os.replace(tmp, record)
    except OSError:
        pass
    return digest
