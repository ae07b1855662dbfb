"""``dlm data build`` / ``dlm data tokenizer``: rebuild the shipped corpus and tokenizer.

Defaults are the shipped ``data/debian`` and ``data/tokenizer`` folders wherever the command
runs from (:mod:`dlm.paths`); a path typed on the command line is relative to the current directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from dlm.errors import DLMError


def add_parser(sub) -> None:
    d = sub.add_parser("data", help="build the Debian corpus and the tokenizer")
    dsub = d.add_subparsers(dest="data_command", required=True)
    b = dsub.add_parser("build", help="Debian package descriptions -> data/debian/{train,validation,test}.jsonl.xz",
                        description="Reads apt's lists; run `apt-get update -o Acquire::Languages=en` first.")
    b.add_argument("--out", default=None, help="output directory (default: the shipped data/debian)")
    b.add_argument("--lists", default="/var/lib/apt/lists", help="apt lists directory (default: %(default)s)")
    b.add_argument("--overwrite", action="store_true", help="replace the files of an existing non-empty --out")
    b.set_defaults(func=cmd_build)
    t = dsub.add_parser("tokenizer", help="train the byte-level BPE tokenizer on the train split")
    t.add_argument("--data", default=None, help="dataset directory (default: the shipped data/debian)")
    t.add_argument("--out", default=None, help="output directory (default: the shipped data/tokenizer)")
    t.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size (default: %(default)s)")
    t.add_argument("--overwrite", action="store_true", help="replace the files of an existing non-empty --out")
    t.set_defaults(func=cmd_tokenizer)


def _output(out, overwrite: bool) -> Path:
    """``out`` checked before any work: writable, and empty unless ``--overwrite`` (the default
    output is the shipped data, which a rebuild must not replace by accident)."""
    from dlm.outputs import check_output_dir

    out = check_output_dir(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DLMError(f"--out {out} already holds files; pass --overwrite to replace them, or choose another --out")
    return out


def cmd_build(args) -> int:
    from dlm.data.debian import build_debian
    from dlm.paths import shipped_data_target

    out = _output(args.out if args.out is not None else shipped_data_target("debian"), args.overwrite)
    manifest = build_debian(out, args.lists)
    print(json.dumps(manifest["splits"]))
    return 0


def cmd_tokenizer(args) -> int:
    from dlm.data.tokenizer import build_tokenizer, check_vocab_size
    from dlm.paths import data_path, shipped_data_target

    check_vocab_size(args.vocab_size)
    out = _output(args.out if args.out is not None else shipped_data_target("tokenizer"), args.overwrite)
    tok = build_tokenizer(data_path(args.data, "debian"), out, args.vocab_size)
    print(json.dumps({"out": str(out), "vocab_size": len(tok)}))
    return 0
