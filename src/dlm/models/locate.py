"""Where a model argument points: a directory, a shipped model's name, a packaged base's name
(:mod:`dlm.models.bases`), or a Hugging Face hub id, in that order.

dlm never downloads. A hub id (``GSAI-ML/LLaDA-8B-Instruct``) that is not a local directory is
looked up in the local Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
``~/.cache/huggingface/hub``; layout ``models--ORG--NAME/snapshots/<revision>/`` with
``refs/main`` naming the revision) and loaded from there when the snapshot is complete;
otherwise the error says how to make a local copy.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from dlm.errors import CheckpointError

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache directory, as huggingface_hub resolves it from the environment."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):  # the older name
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def looks_like_hub_id(text: str) -> bool:
    """``org/name`` with hub-legal characters (not ``./x``, ``/x`` or ``a/b/c``)."""
    return bool(_HUB_ID.match(text)) and ".." not in text


def weights_complete(path: Path) -> bool:
    """config.json plus every weight file it needs (a shard index's shards all present)."""
    if not (path / "config.json").is_file():
        return False
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (path / single).is_file():
            return True
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).is_file():
            try:
                shards = set(json.loads((path / index).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return False
            return all(isinstance(s, str) and (path / s).is_file() for s in shards)
    return False


def cached_snapshot(hub_id: str, cache: Path | None = None) -> tuple[Path | None, Path]:
    """(the complete snapshot of ``hub_id`` in the cache or None, the repo folder looked at)."""
    repo = (cache or hf_hub_cache()) / ("models--" + hub_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    candidates: list[Path] = []
    ref = repo / "refs" / "main"
    if ref.is_file():
        candidates.append(snapshots / ref.read_text().strip())
    if snapshots.is_dir():  # no refs/main (e.g. a revision downloaded by hash): newest first
        others = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime,
                        reverse=True)
        candidates += [p for p in others if p not in candidates]
    for snap in candidates:
        if weights_complete(snap):
            return snap, repo
    return None, repo


def resolve_model_path(path: str | Path) -> Path:
    """The local directory for a model argument that is not an existing path (see the module doc)."""
    from dlm.models.default import pretrained_dir, shipped_models

    given = Path(path).expanduser()
    if given.exists():
        return given
    text = str(path)
    if text in shipped_models():
        return pretrained_dir() / text  # a shipped model by name, e.g. "tiny-ar"
    from dlm.models.bases import BASES, base_dir

    if text in BASES:
        return base_dir(text)  # a packaged base, e.g. "smollm2-135m-instruct" (converted once, then cached)
    if not looks_like_hub_id(text):
        return given  # read_config names the missing directory
    snapshot, repo = cached_snapshot(text)
    if snapshot is not None:
        return snapshot
    state = (f"its Hugging Face cache entry {repo} has no complete snapshot" if repo.exists()
             else f"it is not in the local Hugging Face cache ({repo.parent})")
    raise CheckpointError(
        f"{text}: no such directory, and {state}; dlm never downloads: fetch it with "
        f"`huggingface-cli download {text} --local-dir DIR` (or `hf download ...`) and pass DIR"
    )
