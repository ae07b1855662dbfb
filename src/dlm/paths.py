"""Where dlm's shipped files live, resolved the same way by every command.

The shipped models sit inside the package (``dlm/pretrained``); the shipped corpus and tokenizer
sit in the repository's ``data/`` folder, next to ``src/``. A default path such as
``data/tokenizer`` always means the shipped copy, whatever the current directory is; a path the
user types is taken as given (relative to the current directory).
"""

from __future__ import annotations

import os
from pathlib import Path

from dlm.errors import DLMError

REPO_ROOT = Path(__file__).resolve().parents[2]  # src/dlm/paths.py -> the repository
SHIPPED_DATA = {"debian": "data/debian", "tokenizer": "data/tokenizer"}


def shipped_data(name: str) -> Path:
    """The shipped ``data/debian`` or ``data/tokenizer`` folder; a clear error when this install lacks it."""
    path = REPO_ROOT / SHIPPED_DATA[name]
    if not path.exists():
        raise DLMError(f"the shipped {SHIPPED_DATA[name]} is not part of this installation (looked in {path}); "
                       f"pass a local copy explicitly")
    return path


def data_path(given: str | Path | None, name: str) -> Path:
    """``given`` as typed (expanded), or the shipped folder ``name`` when ``given`` is None."""
    return Path(given).expanduser() if given is not None else shipped_data(name)


def shipped_data_target(name: str) -> Path:
    """Where ``dlm data build`` / ``dlm data tokenizer`` write by default: the shipped folder ``name``
    of this source checkout (it may not exist yet); a clear error for an installed package."""
    if not (REPO_ROOT / "pyproject.toml").is_file():
        raise DLMError(f"this dlm is an installed package, not a source checkout, so it has no {SHIPPED_DATA[name]} "
                       "to rebuild; pass --out DIR")
    return REPO_ROOT / SHIPPED_DATA[name]


def cache_dir(kind: str) -> Path:
    """dlm's cache folder for ``kind`` (``tokenized``, ``bases``, ...): ``$DLM_CACHE_DIR/kind``, else
    ``$XDG_CACHE_HOME/dlm/kind``, else ``~/.cache/dlm/kind``. Not created here."""
    if os.environ.get("DLM_CACHE_DIR"):
        return Path(os.environ["DLM_CACHE_DIR"]).expanduser() / kind
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "dlm" / kind
