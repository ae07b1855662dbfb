"""Build an out-of-domain summarisation set from the Python standard library's module docstrings.

Each docstring (of a module, or of a public top-level class or function) whose first line is a one-line summary and whose body (the paragraphs after
the first) has 25-220 words becomes a pair: the body is the document, the first line (without
the module name prefix some docstrings start with) the reference summary. These are short
technical documents that no dlm model was tuned on (the shipped models saw Debian package
descriptions only), so they test whether a model summarises text of another domain - the
held-back check of issue 14. Files are parsed with ``ast`` (nothing is imported); the result
depends on the Python version, which the manifest records.

    python scripts/build_techdocs.py [--out benchmarks/data/techdocs]
    dlm eval --task debian --data benchmarks/data/techdocs --model M   # the Debian prompt
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import sys
import sysconfig
from pathlib import Path

SKIP_PARTS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "lib2to3", "idlelib", "turtledemo"}


def module_files(stdlib: Path) -> list[Path]:
    files = []
    for f in sorted(stdlib.rglob("*.py")):
        rel = f.relative_to(stdlib)
        if SKIP_PARTS & set(rel.parts) or any(p.startswith(("_", ".")) and p != "__init__.py" for p in rel.parts):
            continue
        files.append(f)
    return files


def pairs(path: Path, stdlib: Path) -> list[dict]:
    """The module's own pair and those of its public top-level classes and functions."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    module = ".".join(path.relative_to(stdlib).with_suffix("").parts).removesuffix(".__init__")
    nodes = [(module, module.split(".")[-1], tree)] + [
        (f"{module}.{n.name}", n.name, n) for n in tree.body
        if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and not n.name.startswith("_")]
    return [r for name, short, node in nodes if (r := pair(name, short, ast.get_docstring(node, clean=True)))]


def pair(name: str, short: str, doc: str | None) -> dict | None:
    if not doc:
        return None
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", doc) if p.strip()]
    if len(paragraphs) < 2 or "\n" in paragraphs[0]:
        return None
    summary = paragraphs[0]
    summary = re.sub(rf"^{re.escape(short)}(\.py|\(\))?\s*[-:\u2014]+\s*", "", summary).strip()
    body = " ".join(" ".join(p.split()) for p in paragraphs[1:])
    words = len(body.split())
    if not (3 <= len(summary.split()) <= 20) or not (25 <= words <= 220):
        return None
    if sum(ch.isalpha() for ch in body) < 0.6 * len(body):  # mostly code or tables
        return None
    return {"id": name, "description": body, "synopsis": summary.rstrip(".")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/data/techdocs")
    args = ap.parse_args()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    rows = [r for f in module_files(stdlib) for r in pairs(f, stdlib)]
    out = Path(args.out)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "test.jsonl").write_text(text)
    except OSError as e:
        ap.error(f"--out {out}: cannot write there ({e.strerror or e})")
    manifest = {"source": f"module docstrings of the Python {sys.version.split()[0]} standard library ({stdlib})",
                "built_by": "scripts/build_techdocs.py", "pairs": len(rows),
                "sha256": hashlib.sha256(text.encode()).hexdigest()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{len(rows)} pairs -> {out / 'test.jsonl'}")


if __name__ == "__main__":
    main()
