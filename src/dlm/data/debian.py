"""Debian package descriptions: ~60k human-written (long description -> one-line synopsis) pairs.

``build_debian(out_dir)`` reads apt's English translation lists (``*_i18n_Translation-en.lz4``
under /var/lib/apt/lists, fetched by ``apt-get update -o Acquire::Languages=en``) and the
``Packages`` lists (for each binary package's source package), and writes

    out_dir/{train,validation,test}.jsonl.xz   one {"package", "synopsis", "description", "group"} per line
    out_dir/manifest.json                      counts, sizes, inputs and the split rule

Near-duplicates never straddle splits: packages are joined into groups (union-find) when they
share a source package, a name stem (``foo`` / ``foo-data`` / ``foo-doc``) or the normalised
first paragraph of their long description, and a whole group goes to one split, chosen by a
SHA-256 hash of its smallest package name. Within a group exact duplicate descriptions are kept once.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

from dlm.errors import DLMError, first_line

APT_LISTS = Path("/var/lib/apt/lists")
SPLIT_BUCKETS = 1000  # hash(group) % 1000: [0, 35) test, [35, 70) validation, rest train
TEST_BUCKETS = 35
VALIDATION_BUCKETS = 35
NAME_SUFFIXES = ("-data", "-doc", "-docs", "-common", "-dev", "-dbg", "-tools", "-utils", "-bin", "-examples",
                 "-plugins", "-plugin", "-perl", "-java", "-gtk", "-qt", "-cli", "-core", "-lib", "-extra")


def _decompress(path: Path) -> str:
    """Text of an apt list file (plain or .lz4, via the ``lz4`` tool apt systems ship)."""
    if path.suffix != ".lz4":
        return path.read_text(encoding="utf-8", errors="replace")
    if shutil.which("lz4") is None:
        raise DLMError(f"{path} is lz4-compressed and the `lz4` command is not installed (apt-get install lz4)")
    out = subprocess.run(["lz4", "-dc", str(path)], capture_output=True, check=False)
    if out.returncode != 0:
        raise DLMError(f"lz4 could not read {path}: {out.stderr.decode(errors='replace').strip()}")
    return out.stdout.decode("utf-8", errors="replace")


def _stanzas(text: str):
    """Yield dict(field -> raw value with continuation lines) for each RFC-822 stanza."""
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields, key = {}, None
        elif line[0] in " \t" and key is not None:
            fields[key] += "\n" + line
        elif ":" in line:
            key, value = line.split(":", 1)
            fields[key] = value.strip()
    if fields:
        yield fields


def parse_description(raw: str) -> tuple[str, str]:
    """Debian ``Description`` value -> (synopsis, long description as plain text).

    Continuation lines start with one space; " ." is a paragraph break; lines indented by two or
    more spaces are verbatim (lists, code) and keep their own line.
    """
    first, *rest = raw.split("\n")
    paragraphs: list[str] = []
    current: list[str] = []

    def flush():
        if current:
            paragraphs.append("".join(current).strip())
            current.clear()

    for line in rest:
        body = line[1:] if line.startswith(" ") else line
        if body.strip() == ".":
            flush()
        elif body.startswith(" "):  # verbatim line
            if current and not current[-1].endswith("\n"):
                current.append("\n")
            current.append(body.rstrip() + "\n")
        else:
            if current and not current[-1].endswith("\n"):
                current.append(" ")
            current.append(body.strip())
    flush()
    return first.strip(), "\n".join(p for p in paragraphs if p)


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def name_stem(package: str) -> str:
    stem = package
    changed = True
    while changed:
        changed = False
        for suffix in NAME_SUFFIXES:
            if stem.endswith(suffix) and len(stem) > len(suffix) + 1:
                stem, changed = stem[: -len(suffix)], True
    return re.sub(r"[\d.]+$", "", stem) or stem


def split_of(group: str) -> str:
    bucket = int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) % SPLIT_BUCKETS
    if bucket < TEST_BUCKETS:
        return "test"
    if bucket < TEST_BUCKETS + VALIDATION_BUCKETS:
        return "validation"
    return "train"


class _UnionFind:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def read_pairs(lists_dir: Path = APT_LISTS) -> tuple[list[dict], dict[str, str], list[str]]:
    """(records, package -> source package, input file names) from the apt lists."""
    translations = sorted(lists_dir.glob("*_i18n_Translation-en*"))
    if not translations:
        raise DLMError(f"no *_i18n_Translation-en files in {lists_dir}; run `apt-get update -o Acquire::Languages=en`")
    records: dict[str, dict] = {}
    for path in translations:
        for st in _stanzas(_decompress(path)):
            if "Package" not in st or "Description-en" not in st:
                continue
            synopsis, description = parse_description(st["Description-en"])
            if synopsis and description:
                records.setdefault(st["Package"], {"package": st["Package"], "synopsis": synopsis,
                                                   "description": description})
    sources: dict[str, str] = {}
    for path in sorted(lists_dir.glob("*_binary-*_Packages*")):
        for st in _stanzas(_decompress(path)):
            if "Package" in st:
                sources[st["Package"]] = st.get("Source", st["Package"]).split()[0]
    return list(records.values()), sources, [p.name for p in translations]


def assign_groups(records: list[dict], sources: dict[str, str]) -> None:
    """Set record["group"] so near-duplicates share a group."""
    uf = _UnionFind()
    for r in records:
        pkg = r["package"]
        uf.union("pkg:" + pkg, "src:" + sources.get(pkg, pkg))
        uf.union("pkg:" + pkg, "stem:" + name_stem(pkg))
        uf.union("pkg:" + pkg, "para:" + _normalise(r["description"].split("\n")[0])[:200])
    members: dict[str, list[str]] = defaultdict(list)
    for r in records:
        members[uf.find("pkg:" + r["package"])].append(r["package"])
    names = {root: min(pkgs) for root, pkgs in members.items()}
    for r in records:
        r["group"] = names[uf.find("pkg:" + r["package"])]


def build_debian(out_dir: str | Path, lists_dir: str | Path = APT_LISTS) -> dict:
    out = Path(out_dir)
    records, sources, inputs = read_pairs(Path(lists_dir))
    assign_groups(records, sources)
    records.sort(key=lambda r: (r["group"], r["package"]))
    seen: set[tuple[str, str]] = set()
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    duplicates = 0
    for r in records:
        key = (r["group"], _normalise(r["description"]))
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        splits[split_of(r["group"])].append(r)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "source": "Debian bookworm English package descriptions (apt *_i18n_Translation-en)",
        "inputs": inputs, "license": "descriptions are part of Debian packages; see each package's copyright",
        "split_rule": f"sha256(group)[:8] % {SPLIT_BUCKETS}: < {TEST_BUCKETS} test, "
                      f"< {TEST_BUCKETS + VALIDATION_BUCKETS} validation, else train",
        "grouping": "union of same source package, same name stem, same normalised first paragraph",
        "pairs_read": len(records), "exact_duplicates_dropped": duplicates, "splits": {},
    }
    for name, rows in splits.items():
        path = out / f"{name}.jsonl.xz"
        with lzma.open(path, "wt", encoding="utf-8", preset=9) as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        manifest["splits"][name] = {"pairs": len(rows), "groups": len({r["group"] for r in rows}),
                                    "bytes_compressed": path.stat().st_size,
                                    "chars": sum(len(r["description"]) + len(r["synopsis"]) for r in rows)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def split_file(data_dir: str | Path, split: str) -> Path:
    """``data_dir/SPLIT.jsonl.xz``, or a DLMError when it is missing."""
    path = Path(data_dir) / f"{split}.jsonl.xz"
    if not path.is_file():
        raise DLMError(f"no {split} split at {path}; build it with `dlm data build`")
    return path


def _record(raw: bytes, path: Path, line: int) -> dict:
    """One JSONL line as a record with string "synopsis" and "description", or a DLMError naming file and line."""
    where = f"{path} line {line}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DLMError(f"{where} is not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise DLMError(f"{where} is not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise DLMError(f"{where} is not a JSON object")
    for key in ("synopsis", "description"):
        if not isinstance(record.get(key), str):
            raise DLMError(f"{where} lacks a string field {key!r}")
    return record


def load_split(data_dir: str | Path, split: str) -> list[dict]:
    """Records of one split (``train``, ``validation`` or ``test``); a damaged file is a DLMError
    naming the file and line."""
    path = split_file(data_dir, split)
    records = []
    try:
        with lzma.open(path, "rb") as f:
            for line, raw in enumerate(f, 1):
                if raw.strip():
                    records.append(_record(raw, path, line))
    except (lzma.LZMAError, EOFError) as e:
        raise DLMError(f"{path} is not a readable .xz file ({first_line(e)})") from None
    except OSError as e:
        raise DLMError(f"cannot read {path} ({e.strerror or first_line(e)})") from None
    return records
