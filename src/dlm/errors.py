"""Errors that dlm raises at users.

Every error dlm raises on bad input is a :class:`DLMError` (a ``ValueError``) whose message is one
sentence naming what was wrong, so the CLI and the server can show it as is.
"""


class DLMError(ValueError):
    """Invalid input, setting or checkpoint. The message is meant for the user."""


class CheckpointError(DLMError):
    """A checkpoint directory that cannot be loaded (missing file, bad or unsupported field)."""


def first_line(e: BaseException) -> str:
    """``TypeName: first line of the message`` (the message may be empty)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
