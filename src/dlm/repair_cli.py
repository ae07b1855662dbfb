"""``dlm repair``: read a text that may hold wrong tokens, predict every position, show what changed.

    dlm repair --model tiny-a2d --text "The package provides a libary for parsing YAML"
    dlm repair --model tiny-mdm --file text.txt --passes 2 --json
    dlm repair --model tiny-a2d --ids "0,412,77,1093"

The text is tokenised without special tokens and read behind a BOS that never changes (as ``dlm
eval --task repair`` reads its texts: a shifted model has no prediction for the first position);
``--ids`` are taken as given (a shifted model keeps the first one). One forward pass per
``--passes``, argmax at every position (:func:`dlm.repair`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dlm.errors import DLMError

EPILOG = ("Output: the repaired text, the input with each changed token marked old[->new], and a count; --json "
          "prints one record (input_ids, ids, the changed positions with their old and new ids and text, the "
          "ids after each pass). Models without a tokenizer take --ids and print ids.")


def _parse_ids(text: str) -> list[int]:
    from dlm.prompt_input import parse_ids

    ids = parse_ids(text, "--ids")
    if not ids:
        raise DLMError("--ids is empty: there is nothing to repair")
    return ids


def _read_text(args: argparse.Namespace) -> str:
    """The text of --text or --file (UTF-8, checked); '-' as --file reads standard input."""
    from dlm.prompt_input import _utf8_arg

    if args.text is not None:
        text, what = _utf8_arg(args.text, "--text"), "--text"
    else:
        what = "standard input" if args.file == "-" else f"--file {args.file}"
        if args.file == "-":
            stream = getattr(sys.stdin, "buffer", None)
            data = stream.read() if stream is not None else sys.stdin.read().encode("utf-8")
        else:
            try:
                data = Path(args.file).read_bytes()
            except FileNotFoundError:
                raise DLMError(f"--file {args.file} does not exist") from None
            except IsADirectoryError:
                raise DLMError(f"--file {args.file} is a directory, not a text file") from None
            except OSError as e:
                raise DLMError(f"--file {args.file}: cannot read it ({e.strerror or e})") from None
        try:
            text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
        except UnicodeDecodeError as e:
            raise DLMError(f"{what} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") from None
        text = text.removesuffix("\n").removesuffix("\r")  # the file's final newline is not part of the text
    if not text.strip():
        raise DLMError(f"{what} is empty: there is nothing to repair")
    return text


def _show(text: str) -> str:
    """A token's text inside a change mark: line breaks and tabs visible."""
    return text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")


def _diff(model, before: list[int], after: list[int]) -> str:
    """``before`` as text with each changed token marked ``old[->new]`` (ids without a tokenizer)."""
    if model.tokenizer is None:
        return " ".join(str(a) if a == b else f"{a}[->{b}]" for a, b in zip(before, after))
    parts, run = [], []
    for a, b in zip(before, after):
        if a == b:
            run.append(a)
            continue
        if run:
            parts.append(model.decode(run, skip_special_tokens=False))
            run = []
        parts.append(f"{_show(model.decode([a], skip_special_tokens=False))}"
                     f"[->{_show(model.decode([b], skip_special_tokens=False))}]")
    if run:
        parts.append(model.decode(run, skip_special_tokens=False))
    return "".join(parts)


def cmd_repair(args: argparse.Namespace) -> int:
    import dlm
    from dlm.repair import check_passes, leading_token, repair

    # everything that can be checked without the model is checked before it loads
    passes = check_passes(args.passes, "--passes")
    ids = _parse_ids(args.ids) if args.ids is not None else None
    text = _read_text(args) if ids is None else None
    model = dlm.load(args.model, device=args.device, dtype=args.dtype)
    V = model.facts.vocab_size
    added_bos = False
    if ids is None:
        if model.tokenizer is None:
            raise DLMError(f"{args.model or 'the model'} has no tokenizer; pass token ids with --ids")
        ids = [int(i) for i in model.tokenizer(text, add_special_tokens=False)["input_ids"]]
        if not ids:
            raise DLMError("the text has no tokens: there is nothing to repair")
        ids, added_bos = [leading_token(model)] + ids, True
    else:
        bad = [i for i in ids if not 0 <= i < V]
        if bad:
            raise DLMError(f"--ids: id {bad[0]} is outside the vocabulary [0, {V}) of {args.model or 'the default model'}")
    import torch

    keep = torch.zeros(1, len(ids), dtype=torch.bool)
    keep[0, 0] = added_bos
    out = repair(model, torch.tensor([ids]), passes=passes, keep=keep, return_dict=True)
    before, after = ids, out.ids[0].tolist()
    start = 1 if added_bos else 0  # the BOS dlm put there is not the user's
    changed = out.changed_positions(0)
    has_tok = model.tokenizer is not None

    def piece(i: int) -> str | None:
        return model.decode([i], skip_special_tokens=False) if has_tok else None

    repaired_text = model.decode(after[start:]) if has_tok else None
    if args.json:
        record = {
            "model": args.model or "default", "passes": passes, "bos_added": added_bos,
            "input_text": text, "text": repaired_text,
            "input_ids": before, "ids": after,
            "changed": [{"position": p, "from": before[p], "to": after[p], "from_text": piece(before[p]),
                         "to_text": piece(after[p])} for p in changed],
            "n_changed": len(changed), "n_tokens": len(before) - start,
            "history": out.history[:, 0].tolist(),
            "device": str(model.device), "dtype": str(model.dtype).removeprefix("torch."),
        }
        print(json.dumps(record, ensure_ascii=False))
        return 0
    print(repaired_text if has_tok else " ".join(map(str, after[start:])))
    print(f"changes: {_diff(model, before[start:], after[start:])}")
    print(f"changed {len(changed)} of {len(before) - start} tokens in {passes} pass{'es' if passes != 1 else ''}")
    return 0


def add_parser(sub) -> None:
    from dlm.models.default import DEFAULT_MODEL

    r = sub.add_parser("repair", help="let the model fix wrong tokens in a text (one forward pass, argmax)",
                       description="Read a text (or token ids) without any mask token, predict every position "
                                   "by argmax in one forward pass (--passes K: K passes, each reading the last), "
                                   "and print the repaired text with the changed tokens marked. Text is "
                                   "tokenised without special tokens behind a BOS that never changes.",
                       epilog=EPILOG)
    r.add_argument("--model", default=None, help="checkpoint directory or shipped model name (default: the embedded "
                   f"default, {DEFAULT_MODEL})")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to repair")
    src.add_argument("--file", metavar="FILE", help="a UTF-8 file whose whole content is the text ('-': stdin)")
    src.add_argument("--ids", help="token ids, e.g. '1,2,3' (taken as given: no BOS is added)")
    r.add_argument("--passes", type=int, default=1, help="forward passes, each reading the previous output (default 1)")
    r.add_argument("--json", action="store_true", help="print one JSON record (ids, changed positions, history)")
    r.add_argument("--device", default="cpu", help="torch device (default cpu)")
    r.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 on CPU)")
    r.set_defaults(func=cmd_repair)
