"""``dlm data build`` / ``dlm data tokenizer``: rebuild the shipped corpus and tokenizer."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    d = sub.add_parser("data", help="build the Debian corpus and the tokenizer")
    dsub = d.add_subparsers(dest="data_command", required=True)
    b = dsub.add_parser("build", help="Debian package descriptions -> data/debian/{train,validation,test}.jsonl.xz",
                        description="Reads apt's lists; run `apt-get update -o Acquire::Languages=en` first.")
    b.add_argument("--out", default="data/debian")
    b.add_argument("--lists", default="/var/lib/apt/lists", help="apt lists directory")
    b.set_defaults(func=cmd_build)
    t = dsub.add_parser("tokenizer", help="train the byte-level BPE tokenizer on the train split")
    t.add_argument("--data", default="data/debian")
    t.add_argument("--out", default="data/tokenizer")
    t.add_argument("--vocab-size", type=int, default=8192)
    t.set_defaults(func=cmd_tokenizer)


def cmd_build(args) -> int:
    from dlm.data.debian import build_debian

    manifest = build_debian(args.out, args.lists)
    print(json.dumps(manifest["splits"]))
    return 0


def cmd_tokenizer(args) -> int:
    from dlm.data.tokenizer import build_tokenizer

    tok = build_tokenizer(args.data, args.out, args.vocab_size)
    print(json.dumps({"out": args.out, "vocab_size": len(tok)}))
    return 0
