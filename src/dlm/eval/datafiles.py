"""Read evaluation data from local files in the layouts Hugging Face datasets are published in.

A ``--data`` path may be a file (``.jsonl``, ``.json`` holding a list of records or
``{"data": [...]}``, ``.parquet``, optionally ``.xz``/``.gz`` compressed JSON Lines) or a directory
as ``huggingface-cli download --repo-type dataset`` leaves it, where the files of the wanted split
are found by name (``test.jsonl``, ``test-00000-of-00001.parquet``, ``3.0.0/test-*.parquet``,
``data/test/0000.parquet``, ...). Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
from pathlib import Path

from dlm.errors import DLMError

SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.xz", ".jsonl.gz", ".json.gz")


def _open_text(path: Path):
    if path.suffix == ".xz":
        return lzma.open(path, "rt", encoding="utf-8")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _is_data_file(p: Path) -> bool:
    return p.is_file() and any(p.name.endswith(s) for s in SUFFIXES)


def split_files(path: str | Path, split: str) -> list[Path]:
    """The data files of ``split`` under ``path`` (the file itself when ``path`` is a file)."""
    path = Path(path)
    if not path.exists():
        raise DLMError(f"data path {path} does not exist")
    if path.is_file():
        if not _is_data_file(path):
            raise DLMError(f"{path}: unsupported data file (expected one of {', '.join(SUFFIXES)})")
        return [path]
    # hidden files and folders below ``path`` are skipped (not the folders above it: a checkout may live in one)
    files = sorted(p for p in path.rglob("*")
                   if _is_data_file(p) and not any(part.startswith(".") for part in p.relative_to(path).parts))
    # a file belongs to the split when the split name is a path component or a file-name prefix
    chosen = [p for p in files if split in p.relative_to(path).parts[:-1]
              or p.name.split(".")[0].split("-")[0] == split]
    if not chosen:
        names = ", ".join(str(p.relative_to(path)) for p in files[:8]) or "none"
        raise DLMError(f"no {split!r} split under {path} (data files found: {names})")
    return chosen


def read_records(files: list[Path]) -> list[dict]:
    records: list[dict] = []
    for f in files:
        if f.name.endswith(".parquet"):
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise DLMError(f"reading {f.name} needs pyarrow: pip install 'dlm[eval]'") from None
            records += pq.read_table(f).to_pylist()
            continue
        with _open_text(f) as fh:
            if ".jsonl" in f.name:
                for lineno, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            records.append(json.loads(line))
                        except json.JSONDecodeError as e:
                            raise DLMError(f"{f}:{lineno}: not JSON ({e.msg})") from None
            else:
                try:
                    data = json.load(fh)
                except json.JSONDecodeError as e:
                    raise DLMError(f"{f}: not JSON ({e.msg} at line {e.lineno})") from None
                if isinstance(data, dict) and isinstance(data.get("data"), list):
                    data = data["data"]
                if not isinstance(data, list):
                    raise DLMError(f"{f}: expected a JSON list of records")
                records += data
    for r in records[:1]:
        if not isinstance(r, dict):
            raise DLMError(f"{files[0]}: records must be JSON objects, got {type(r).__name__}")
    return records


def pick_field(record: dict, candidates: tuple[str, ...], what: str, source: str) -> str:
    """The first of ``candidates`` present in ``record`` (a clear error names them all)."""
    for name in candidates:
        if name in record:
            return name
    raise DLMError(f"{source}: records have no {what} field (looked for {', '.join(candidates)}; "
                   f"found {', '.join(sorted(record)) or 'none'})")


def fingerprint(files: list[Path]) -> tuple[str, dict[str, str]]:
    """(sha256 over the bytes of all files in path order, {file: its own sha256}), full hex digests.

    One file's combined digest is its own, so ``sha256sum FILE`` checks it.
    """
    h = hashlib.sha256()
    per_file = {}
    for f in sorted(files):
        fh = hashlib.sha256()
        with open(f, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                h.update(chunk)
                fh.update(chunk)
        per_file[str(f)] = fh.hexdigest()
    return h.hexdigest(), per_file
