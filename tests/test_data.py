"""The Debian corpus builder, the shipped dataset and the shipped tokenizer."""

import json
import lzma
from pathlib import Path

import pytest

from dlm.data.debian import build_debian, load_split, name_stem, parse_description, split_of
from dlm.data.tokenizer import train_bpe

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "debian"
TOKENIZER = ROOT / "data" / "tokenizer"


def test_parse_description_paragraphs_and_verbatim_lines():
    raw = ("Real-time strategy game\n first line of the\n long text.\n .\n Second paragraph:\n"
           "  * item one\n  * item two\n after the list.")
    synopsis, text = parse_description(raw)
    assert synopsis == "Real-time strategy game"
    assert text == "first line of the long text.\nSecond paragraph:\n * item one\n * item two\nafter the list."


def test_name_stem_joins_data_and_doc_packages():
    assert name_stem("0ad-data-common") == name_stem("0ad-data") == name_stem("0ad") == "0ad"
    assert name_stem("python3.11-dev") == "python"
    assert name_stem("bash") == "bash"


def _name(i: int) -> str:
    return "hx" if i == 7 else chr(97 + i % 26) + chr(97 + i // 26)


def _fake_lists(tmp_path: Path) -> Path:
    lists = tmp_path / "lists"
    lists.mkdir()
    stanzas = []
    for i in range(60):  # names without trailing digits (a version-like suffix joins name stems)
        stanzas.append(f"Package: tool{_name(i)}\nDescription-md5: x\nDescription-en: tool number {i}\n"
                       f" Tool {i} does thing {i} very well.\n .\n It is number {i}.\n")
    stanzas.append("Package: toolhx-data\nDescription-en: data for tool 7\n Tool 7 does thing 7 very well.\n")
    stanzas.append("Package: dup-a\nDescription-en: a duplicate\n Same text everywhere.\n")
    stanzas.append("Package: dup-b\nDescription-en: a duplicate\n Same text everywhere.\n")
    stanzas.append("Package: nolong\nDescription-en: only a synopsis\n")
    (lists / "x_main_i18n_Translation-en").write_text("\n".join(stanzas))
    (lists / "x_main_binary-amd64_Packages").write_text("Package: dup-b\nSource: dup-a\nVersion: 1\n")
    return lists


def test_build_groups_near_duplicates_into_one_split(tmp_path):
    manifest = build_debian(tmp_path / "out", _fake_lists(tmp_path))
    rows = {s: load_split(tmp_path / "out", s) for s in ("train", "validation", "test")}
    everything = [r for rs in rows.values() for r in rs]
    names = [r["package"] for r in everything]
    assert "nolong" not in names  # no long description: not a pair
    assert len([n for n in names if n.startswith("dup-")]) == 1  # same source, same text: kept once
    assert manifest["exact_duplicates_dropped"] == 1
    by_name = {r["package"]: r for r in everything}
    assert by_name["toolhx-data"]["group"] == by_name["toolhx"]["group"] == "toolhx"
    assert len({r["group"] for r in everything}) == 61  # 60 tools (toolhx-data joins toolhx) + dup-a
    split_of_pkg = {r["package"]: s for s, rs in rows.items() for r in rs}
    assert split_of_pkg["toolhx-data"] == split_of_pkg["toolhx"] == split_of("toolhx")
    assert sum(m["pairs"] for m in manifest["splits"].values()) == len(everything) == 62  # 60 + toolhx-data + dup-a


def test_shipped_dataset_matches_its_manifest_and_splits_are_disjoint():
    manifest = json.loads((DATA / "manifest.json").read_text())
    splits = {s: load_split(DATA, s) for s in ("validation", "test")}
    for s, rows in splits.items():
        assert len(rows) == manifest["splits"][s]["pairs"]
        assert all(r["synopsis"] and r["description"] for r in rows)
    assert 1500 <= len(splits["test"]) <= 2500
    groups = {s: {r["group"] for r in rows} for s, rows in splits.items()}
    assert not groups["validation"] & groups["test"]
    with lzma.open(DATA / "train.jsonl.xz", "rt") as f:
        train_groups = {json.loads(line)["group"] for line in f}
    assert not train_groups & groups["test"] and not train_groups & groups["validation"]
    assert all(split_of(g) == "test" for g in groups["test"])


def test_shipped_tokenizer_special_tokens_and_chat_template():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER), local_files_only=True)
    assert len(tok) == 8192
    assert tok.convert_ids_to_tokens(list(range(7))) == ["<|bos|>", "<|eos|>", "<|pad|>", "<|mask|>", "<|user|>",
                                                         "<|assistant|>", "<|eot|>"]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.mask_token_id) == (0, 1, 2, 3)
    text = "GNU R package for diagnostic checking in linear models\n  * item"
    assert tok.decode(tok(text)["input_ids"]) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert chat == "<|bos|><|user|>\nhi<|eot|><|assistant|>\n"
    assert len(tok(text)["input_ids"]) < len(text) / 3  # real merges, not bytes


def test_train_bpe_rejects_a_vocabulary_too_small_and_learns_merges():
    with pytest.raises(ValueError, match="at least"):
        train_bpe(["abc"], vocab_size=100)
    tok = train_bpe(["hello world"] * 50, vocab_size=300)
    assert len(tok("hello world")["input_ids"]) <= 3
