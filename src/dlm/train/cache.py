"""A cache of tokenised training data, so that a rerun does not tokenise the corpus again.

One safetensors file per key under :func:`cache_dir` (``$DLM_CACHE_DIR/tokenized``, else
``$XDG_CACHE_HOME/dlm/tokenized``, else ``~/.cache/dlm/tokenized``). The key is a SHA-256 over the
data files' bytes, the tokenizer (its serialised model, special tokens and, for SFT, chat template)
and the settings that change tokenisation, so a changed file or setting is a miss, never stale data.
Files are written to a temporary name and renamed (a crash leaves no half file); a file that
cannot be read is reported in one line and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from dlm import paths
from dlm.errors import first_line
from dlm.provenance import file_sha256

FORMAT = 1  # bump when the stored layout or the tokenisation code changes


def cache_dir() -> Path:
    return paths.cache_dir("tokenized")


def file_digest(path: Path) -> str:
    return file_sha256(path)


def tokenizer_digest(tokenizer, chat: bool) -> str:
    """What decides how ``tokenizer`` splits text: its serialised model and special tokens, and its chat
    template when ``chat`` (prompts are formatted with it)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    template = getattr(tokenizer, "chat_template", None) if chat else None
    extra = json.dumps([type(tokenizer).__name__, tokenizer.special_tokens_map, template], sort_keys=True, default=str)
    return hashlib.sha256((body + extra).encode()).hexdigest()


def cache_path(parts: dict) -> Path:
    """The cache file for ``parts`` (JSON-serialisable: digests and settings)."""
    key = hashlib.sha256(json.dumps({"format": FORMAT, **parts}, sort_keys=True).encode()).hexdigest()
    return cache_dir() / f"{key[:32]}.safetensors"


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """(tensors, metadata) from ``path``; None when it is missing or unreadable (then it is rebuilt)."""
    from safetensors.torch import load_file

    if not path.exists():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["dlm"])
        return load_file(str(path)), meta
    except Exception as e:  # noqa: BLE001 - any damage to a cache file means: rebuild it
        print(f"dlm train: the tokenised-data cache {path} is unreadable ({first_line(e)}); rebuilding it",
              file=sys.stderr)
        return None


def save(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write atomically; a cache that cannot be written is reported, not fatal."""
    from safetensors.torch import save_file

    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".safetensors")
        os.close(fd)
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={"dlm": json.dumps(meta)})
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a shared $DLM_CACHE_DIR should be readable
        os.replace(tmp, path)
    except OSError as e:
        print(f"dlm train: cannot write the tokenised-data cache {path} ({e.strerror or first_line(e)}); "
              "continuing without it", file=sys.stderr)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
