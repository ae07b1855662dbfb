"""The Debian corpus builder, the shipped dataset and the shipped tokenizer."""

import json
import lzma
import re
from pathlib import Path

import pytest

from dlm.cli import main
from dlm.errors import DLMError
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
    with pytest.raises(DLMError, match="--vocab-size must be at least 263"):
        train_bpe(["abc"], vocab_size=100)
    tok = train_bpe(["hello world"] * 50, vocab_size=300)
    assert len(tok("hello world")["input_ids"]) <= 3


def _split(folder: Path, lines: list[bytes], name: str = "train") -> Path:
    folder.mkdir(exist_ok=True)
    with lzma.open(folder / f"{name}.jsonl.xz", "wb") as f:
        f.write(b"".join(line + b"\n" for line in lines))
    return folder


GOOD = json.dumps({"package": "p", "synopsis": "a tool", "description": "It does things."}).encode()


@pytest.mark.parametrize("bad, message", [
    (b'{"synopsis": "caf\xe9", "description": "x"}', "line 2 is not valid UTF-8 (byte 0xe9 at column 18)"),
    (b'{"synopsis": "a",', "line 2 is not valid JSON"),
    (b'["a list"]', "line 2 is not a JSON object"),
    (b'{"synopsis": "a"}', "line 2 lacks a string field 'description'"),
])
def test_a_damaged_split_names_the_file_and_line(tmp_path, bad, message):
    folder = _split(tmp_path / "d", [GOOD, bad, GOOD])
    with pytest.raises(DLMError, match=re.escape(f"{folder / 'train.jsonl.xz'} {message}")):
        load_split(folder, "train")


def test_a_split_that_is_not_xz_is_one_line(tmp_path):
    (tmp_path / "train.jsonl.xz").write_text(GOOD.decode() + "\n")
    with pytest.raises(DLMError, match="is not a readable .xz file"):
        load_split(tmp_path, "train")


def test_cli_train_and_tokenizer_on_a_damaged_split_are_one_line(tmp_path, capsys):
    folder = _split(_split(tmp_path / "d", [GOOD], "validation"), [GOOD, b'{"synopsis": "\xff"}'])
    assert main(["train", "--out", str(tmp_path / "o"), "--data", str(folder), "--no-progress"]) == 2
    assert main(["data", "tokenizer", "--data", str(folder), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"dlm: error: {folder / 'train.jsonl.xz'} line 2 is not valid UTF-8 (byte 0xff at column 15)"] * 2


def test_cli_tokenizer_vocab_size_too_small_is_one_line(tmp_path, capsys):
    assert main(["data", "tokenizer", "--vocab-size", "10", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err == "dlm: error: --vocab-size must be at least 263 (256 bytes + 7 special tokens), got 10\n"
    assert not (tmp_path / "t").exists()


def test_cli_tokenizer_paths_are_relative_to_the_current_directory(tmp_path, monkeypatch, capsys):
    rows = [json.dumps({"synopsis": f"tool {i}", "description": f"Tool {i} does thing {i} well."}).encode()
            for i in range(50)]
    _split(tmp_path / "d", rows)
    monkeypatch.chdir(tmp_path)
    assert main(["data", "tokenizer", "--data", "d", "--out", "tok", "--vocab-size", "300"]) == 0
    assert json.loads(capsys.readouterr().out) == {"out": "tok", "vocab_size": 300}
    assert (tmp_path / "tok" / "tokenizer.json").exists()


def test_data_command_defaults_are_the_shipped_folders(monkeypatch, tmp_path):
    from dlm.cli import build_parser
    from dlm.paths import shipped_data_target

    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["data", "tokenizer"])
    assert (args.data, args.out) == (None, None)  # resolved by dlm.paths, not against the current directory
    assert shipped_data_target("tokenizer") == TOKENIZER and shipped_data_target("debian") == DATA


def test_data_commands_refuse_to_replace_existing_files_without_overwrite(tmp_path, monkeypatch, capsys):
    rows = [json.dumps({"synopsis": f"tool {i}", "description": f"Tool {i} does thing {i} well."}).encode()
            for i in range(50)]
    _split(tmp_path / "d", rows)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("keep me")
    assert main(["data", "tokenizer", "--data", "d", "--out", "tok", "--vocab-size", "300"]) == 2
    assert "already holds files; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "tok" / "tokenizer.json").read_text() == "keep me"
    assert main(["data", "tokenizer", "--data", "d", "--out", "tok", "--vocab-size", "300", "--overwrite"]) == 0
    assert (tmp_path / "tok" / "tokenizer.json").read_text() != "keep me"
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "train.jsonl.xz").write_text("x")
    assert main(["data", "build", "--out", "corpus", "--lists", str(tmp_path / "no-lists")]) == 2
    assert "already holds files; pass --overwrite" in capsys.readouterr().err
