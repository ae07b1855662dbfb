"""Output locations of ``dlm train``, ``dlm eval``, ``dlm report`` and ``dlm trace``, checked before any work.

A run that can only fail when it writes its result should fail before it loads a model or
generates anything: these checks create nothing that is not there afterwards (a probe file, and
any folders made to hold it, are removed again).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from dlm.errors import DLMError


def _probe(folder: Path, flag: str, shown: Path) -> None:
    """Write and remove a file in ``folder`` (permission bits lie to root and on read-only mounts)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".dlm-probe-"):
            pass
    except OSError as e:
        raise DLMError(f"{flag} {shown}: cannot write in {folder} ({e.strerror or e})") from None


def check_output_dir(path: str | Path, flag: str = "--out", shown: Path | None = None) -> Path:
    """``path`` as a folder the run can write into: an existing folder, or one that can be created.
    ``shown``: what the user gave, named in the error (a file in the folder, for ``check_output_file``)."""
    path = Path(path).expanduser()
    shown = shown or path
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            where = f"{path} exists" if shown == path else f"{shown}: {path} exists"
            raise DLMError(f"{flag} {where} and is not a folder")
        _probe(path, flag, shown)
        return path
    missing = [path]  # the folders to create, deepest first
    while not missing[-1].parent.exists() and missing[-1].parent != missing[-1]:
        missing.append(missing[-1].parent)
    base = missing[-1].parent
    if not base.is_dir():
        raise DLMError(f"{flag} {shown}: {base} is a file, not a folder")
    try:
        path.mkdir(parents=True)
    except OSError as e:
        raise DLMError(f"{flag} {shown}: cannot create the folder {path} ({e.strerror or e})") from None
    try:
        _probe(path, flag, shown)
    finally:
        for folder in missing:  # leave nothing behind: the run creates the folder when it writes
            try:
                folder.rmdir()
            except OSError:
                break
    return path


def check_output_file(path: str | Path, suffixes: tuple[str, ...], overwrite: bool = False,
                      flag: str = "--out") -> Path:
    """``path`` as a new file (one of ``suffixes``) in a writable folder; an existing file only with ``overwrite``."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in suffixes:
        raise DLMError(f"{flag} must end in {' or '.join(suffixes)}, got {path.name!r}")
    if path.is_dir():
        raise DLMError(f"{flag} {path} is a folder; give a file name ending in {' or '.join(suffixes)}")
    if path.exists() and not overwrite:
        raise DLMError(f"{flag} {path} exists; pass --overwrite to replace it, or choose another name")
    check_output_dir(path.parent, flag, shown=path)
    if path.exists():
        try:
            open(path, "r+b").close()  # opened for writing, nothing changed
        except OSError as e:
            raise DLMError(f"{flag} {path}: cannot overwrite it ({e.strerror or e})") from None
    return path
