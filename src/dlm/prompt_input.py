"""Prompts as ``dlm generate`` reads them: ``--prompt`` (UTF-8 checked), ``--prompt -`` (stdin,
strictly decoded), ``--prompts-file`` (text or JSONL, errors naming file and line), ``--prompt-ids``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dlm.errors import DLMError


def parse_ids(text: str, what: str = "--prompt-ids") -> list[int]:
    """Token ids typed as ``1,2,3`` or ``1 2 3`` (``what``: the option, for the error message)."""
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise DLMError(f"{what} must be integers separated by commas or spaces, got {text!r}") from None


def _utf8_arg(text: str, what: str) -> str:
    """``text`` from argv; bytes that are not UTF-8 arrive as surrogate escapes (U+DC80..U+DCFF)."""
    for i, ch in enumerate(text):
        if "\udc80" <= ch <= "\udcff":
            raise DLMError(f"{what} is not valid UTF-8 (byte 0x{ord(ch) - 0xdc00:02x} at character {i})")
    return text


def _read_stdin(what: str) -> str:
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # a text stream that is not backed by bytes (tests, embedding)
        return sys.stdin.read()
    data = stream.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DLMError(f"{what}: standard input is not valid UTF-8 "
                       f"(byte 0x{data[e.start]:02x} at offset {e.start})") from None


def _read_prompts_file(path: str) -> list[tuple[object, str]]:
    """(id or None, prompt text) per prompt of a ``--prompts-file``: plain text, one prompt per line
    (blank lines skipped), or JSONL (``.jsonl``) with ``{"prompt": ..., "id": ...}`` per line."""
    if path == "-":
        stream = getattr(sys.stdin, "buffer", None)
        data = stream.read() if stream is not None else sys.stdin.read().encode("utf-8")
        name, jsonl = "standard input", False
    else:
        name, jsonl = path, path.endswith(".jsonl")
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise DLMError(f"--prompts-file {path} does not exist") from None
        except OSError as e:
            raise DLMError(f"--prompts-file {path}: cannot read it ({e.strerror or e})") from None
    prompts: list[tuple[object, str]] = []
    ids: set[object] = set()
    for number, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8").removesuffix("\r")
        except UnicodeDecodeError as e:
            raise DLMError(f"{name} line {number} is not valid UTF-8 "
                           f"(byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
        if not line.strip():
            continue
        if not jsonl:
            prompts.append((None, line))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DLMError(f"{name} line {number} is not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
            raise DLMError(f'{name} line {number}: each line must be an object with a string "prompt"')
        extra = sorted(set(obj) - {"prompt", "id"})
        if extra:
            raise DLMError(f'{name} line {number}: unknown key {extra[0]!r} (keys: "prompt", optional "id")')
        pid = obj.get("id")
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, (str, int))):
            raise DLMError(f'{name} line {number}: "id" must be a string or an integer, got {pid!r}')
        if pid is not None and pid in ids:
            raise DLMError(f"{name} line {number}: id {pid!r} appears twice")
        ids.add(pid)
        prompts.append((pid, obj["prompt"]))
    if not prompts:
        raise DLMError(f"{name} has no prompts")
    return prompts


def read_prompts(args: argparse.Namespace) -> list[tuple[object, str]]:
    """(id or None, text) per prompt of --prompt / --prompts-file; '-' (stdin) at most once."""
    if args.prompts_file is not None:
        return _read_prompts_file(args.prompts_file)
    if args.prompt.count("-") > 1:
        raise DLMError("--prompt - (standard input) can be given only once")
    return [(None, _read_stdin("--prompt -") if p == "-" else _utf8_arg(p, f"--prompt #{i + 1}"))
            for i, p in enumerate(args.prompt)]
