"""The dlm command line on good and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dlm.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_default_model_json(capsys):
    code, out, err = run(capsys, "generate", "--prompt", "Hello", "--gen-length", "8", "--json")
    assert code == 0, err
    rec = json.loads(out)  # the default (smol-idlm) decodes with isd: at most one forward per token, prefill included
    assert rec["model"] == "default" and 1 <= rec["nfe"] <= 9 and rec["sampler"] == "isd"
    assert rec["options"]["gen_length"] == 8 and rec["seed"] == 0 and rec["seconds"] >= 0
    assert rec["versions"]["torch"] and rec["device"] == "cpu" and rec["dtype"] == "torch.float32"
    (r,) = rec["results"]
    assert len(r["ids"]) == 8 and isinstance(r["text"], str)


def test_generate_batch_with_history(capsys, tiny_llada_tok_dir):
    code, out, err = run(capsys, "generate", "--model", str(tiny_llada_tok_dir), "--prompt", "a", "--prompt",
                         "a longer prompt", "--steps", "4", "--gen-length", "8", "--block-length", "4", "--json",
                         "--history")
    assert code == 0, err
    rec = json.loads(out)
    assert len(rec["results"]) == 2 and len(rec["history"]) == 5  # initial canvas + 4 steps


def test_generate_token_ids_without_tokenizer(capsys, tiny_llada_dir):
    code, out, err = run(capsys, "generate", "--model", str(tiny_llada_dir), "--prompt-ids", "1,2,3",
                         "--steps", "4", "--gen-length", "4")
    assert code == 0, err
    assert len(out.split()) <= 4 and all(t.isdigit() for t in out.split())


def test_text_prompt_without_tokenizer_is_a_clear_error(capsys, tiny_llada_dir):
    code, out, err = run(capsys, "generate", "--model", str(tiny_llada_dir), "--prompt", "hi")
    assert code == 2 and err.startswith("dlm: error:") and "no tokenizer" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["generate", "--model", "tiny-a2d-instruct", "--prompt", "x", "--gen-length", "10", "--block-length", "3"],
     "multiple of block_length"),
    (["generate", "--prompt", "x", "--block-length", "4"], "sampler 'isd' has no option 'block_length'"),  # the default
    (["generate", "--prompt", "x", "--model", "/does/not/exist"], "does not exist"),
    (["generate", "--model", "tiny-a2d-instruct", "--prompt", "x", "-o", "bogus=1"], "has no option 'bogus'"),
    (["generate", "--prompt-ids", "1,x"], "must be integers"),
    (["generate", "--prompt", "x", "--dtype", "int3"], "unknown dtype"),
    (["info", "/does/not/exist"], "does not exist"),
])
def test_bad_input_one_line_nonzero_exit(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_info(capsys, tiny_llada_tok_dir):
    code, out, err = run(capsys, "info", str(tiny_llada_tok_dir), "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["model_type"] == "llada" and info["chat_template"] and info["weight_files"] == ["model.safetensors"]
    assert info["parameters"] > 0 and info["mask_id"] is not None
    code, out, _ = run(capsys, "info", str(tiny_llada_tok_dir))
    assert code == 0 and "model_type" in out


def test_console_script_entry_point():
    from pathlib import Path

    script = Path(sys.executable).parent / "dlm"
    assert script.exists(), "the dlm console script is not installed next to the interpreter"
    proc = subprocess.run([str(script), "generate", "--prompt", "hi", "--gen-length", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "gen_length must be >= 1" in proc.stderr and "Traceback" not in proc.stderr


def one_line_error(code, err, *fragments):
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and "internal error" not in err, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize("argv, head", [
    (["generate", "--steps", "x", "--prompt", "hi"], "dlm generate: error: argument --steps: invalid int value: 'x'"),
    ([], "dlm: error: the following arguments are required: command"),
    (["train"], "dlm train: error:"),
    (["eval", "--task", "nope"], "dlm eval: error: argument --task: invalid choice"),
    (["data"], "dlm data: error:"),
    (["data", "build", "--bogus"], "dlm data build: error: unrecognized arguments: --bogus"),
    (["report"], "dlm report: error:"),
    (["trace", "--prompt"], "dlm trace: error:"),
    (["info", "--bogus"], "dlm info: error: unrecognized arguments: --bogus"),
    (["generate", "--prompt", "a", "--json", "--jsonl"], "dlm generate: error: argument --jsonl: not allowed"),
])
def test_usage_errors_are_one_line_with_a_pointer_to_help(capsys, argv, head):
    code, out, err = run(capsys, *argv)
    prog = head.split(": error")[0]
    one_line_error(code, err, head, f"(see {prog} --help)")


def test_help_still_works(capsys):
    code, out, _ = run(capsys, "generate", "--help")
    out = " ".join(out.split())  # argparse wraps lines
    assert code == 0 and "--prompts-file" in out and "one JSON string per line" in out


@pytest.mark.parametrize("option, hint", [
    ("sampler=ar", "use --sampler"), ("seed=3", "use --seed"), ("return_dict=true", "use --json"),
    ("output_history=1", "use --json --history"), ("attention_mask=1", "sets attention_mask itself"),
])
def test_reserved_option_keys_name_the_flag(capsys, tiny_llada_dir, option, hint):
    code, _, err = run(capsys, "generate", "--model", str(tiny_llada_dir), "--prompt-ids", "1", "-o", option)
    one_line_error(code, err, f"-o {option.split('=')[0]}=... is not a sampler option", hint)


@pytest.mark.parametrize("argv, message", [
    (["--history"], "--history needs --json"),
    (["-o", "steps=4", "-o", "steps=8"], "-o steps is given twice"),
    (["--steps", "4", "-o", "steps=8"], "-o steps repeats --steps"),
    (["--gen-length", "8", "-o", "max_new_tokens=8"], "another name for gen_length"),
    (["-o", "num_beams=2"], "beam search"),
    (["-o", "do_sample=true"], "do_sample=true needs a temperature > 0"),
])
def test_ignored_or_conflicting_generate_input_is_an_error(capsys, tiny_llada_dir, argv, message):
    code, _, err = run(capsys, "generate", "--model", str(tiny_llada_dir), "--prompt-ids", "1,2", *argv)
    one_line_error(code, err, message)


def test_hugging_face_aliases_in_the_cli(capsys, tiny_llada_dir):
    code, out, err = run(capsys, "generate", "--model", str(tiny_llada_dir), "--prompt-ids", "1,2",
                         "-o", "max_new_tokens=4", "-o", "do_sample=false", "--json")
    assert code == 0, err
    options = json.loads(out)["options"]
    assert options["gen_length"] == 4 and options["temperature"] == 0.0


def test_non_utf8_prompt_argument(capsys):
    code, _, err = run(capsys, "generate", "--prompt", "ok", "--prompt", "a\udcffb")  # how argv carries byte 0xff
    one_line_error(code, err, "--prompt #2 is not valid UTF-8 (byte 0xff")


def test_non_utf8_stdin_prompt(capsys, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\xff\xfe")))
    code, _, err = run(capsys, "generate", "--prompt", "-")
    one_line_error(code, err, "--prompt -: standard input is not valid UTF-8 (byte 0xff at offset 0)")


def test_non_utf8_argv_through_the_console_script(tmp_path):
    script = Path(sys.executable).parent / "dlm"
    proc = subprocess.run([str(script), "generate", "--prompt", b"a\xffb"], capture_output=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.decode().count("\n") == 1
    assert b"is not valid UTF-8 (byte 0xff" in proc.stderr


def test_prompts_file_text_and_jsonl_output(capsys, tiny_llada_tok_dir, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("first prompt\n\n  \nsecond\r\n")
    base = ["generate", "--model", str(tiny_llada_tok_dir), "--gen-length", "4", "--prompts-file", str(path)]
    code, out, err = run(capsys, *base, "--jsonl")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(r["index"], r["prompt"]) for r in lines] == [(0, "first prompt"), (1, "second")]
    assert all(isinstance(r["text"], str) and r["nfe"] == 4 and "answer_ids" in r for r in lines)
    code, out, err = run(capsys, *base)  # several answers: one JSON string per line
    assert code == 0 and [json.loads(line) for line in out.splitlines()] == [r["text"] for r in lines]


def test_prompts_file_jsonl_with_ids(capsys, tiny_llada_tok_dir, tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "a\\nb", "id": "q1"}\n{"prompt": "c"}\n')
    code, out, err = run(capsys, "generate", "--model", str(tiny_llada_tok_dir), "--gen-length", "4",
                         "--prompts-file", str(path), "--json")
    assert code == 0, err
    results = json.loads(out)["results"]
    assert results[0]["id"] == "q1" and results[0]["prompt"] == "a\nb" and "id" not in results[1]


def test_prompts_file_from_stdin(capsys, monkeypatch, tiny_llada_tok_dir):
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"one\ntwo\n")))
    code, out, err = run(capsys, "generate", "--model", str(tiny_llada_tok_dir), "--gen-length", "4",
                         "--prompts-file", "-", "--jsonl")
    assert code == 0 and [json.loads(line)["prompt"] for line in out.splitlines()] == ["one", "two"]


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", b'{"prompt": "a"}\n{bad\n', "bad.jsonl line 2 is not valid JSON"),
    ("bad.txt", b"fine\nb\xffd\n", "bad.txt line 2 is not valid UTF-8 (byte 0xff at column 2)"),
    ("list.jsonl", b"[1]\n", 'list.jsonl line 1: each line must be an object with a string "prompt"'),
    ("extra.jsonl", b'{"prompt": "a", "answer": "b"}\n', "unknown key 'answer'"),
    ("dup.jsonl", b'{"prompt": "a", "id": 1}\n{"prompt": "b", "id": 1}\n', "dup.jsonl line 2: id 1 appears twice"),
    ("empty.txt", b"\n\n", "empty.txt has no prompts"),
])
def test_bad_prompts_files(capsys, tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    code, _, err = run(capsys, "generate", "--prompts-file", str(tmp_path / name))
    one_line_error(code, err, message)


def test_missing_prompts_file(capsys, tmp_path):
    code, _, err = run(capsys, "generate", "--prompts-file", str(tmp_path / "nope.txt"))
    one_line_error(code, err, "does not exist")


def test_seed_per_prompt_makes_a_prompt_independent_of_its_batch(capsys, tiny_llada_dir):
    base = ["generate", "--model", str(tiny_llada_dir), "--gen-length", "8", "--temperature", "1",
            "--seed-per-prompt", "--json"]
    code, out, err = run(capsys, *base, "--seed", "5", "--prompt-ids", "1,2,3,4", "--prompt-ids", "9")
    assert code == 0, err
    rec = json.loads(out)
    assert rec["seed"] == 5 and rec["seed_per_prompt"] is True and [r["seed"] for r in rec["results"]] == [5, 6]
    code, out, err = run(capsys, *base, "--seed", "6", "--prompt-ids", "9")
    assert json.loads(out)["results"][0]["ids"] == rec["results"][1]["ids"]


def test_nan_weights_are_an_error_not_an_empty_answer(capsys, tmp_path):
    import dlm
    from conftest import make_tiny_llada

    model = make_tiny_llada(seed=2)
    with torch.no_grad():
        model.net.model.transformer.ff_out.weight.fill_(float("nan"))
    dlm.save_pretrained(model, tmp_path)
    code, _, err = run(capsys, "generate", "--model", str(tmp_path), "--prompt-ids", "1,2", "--gen-length", "4")
    one_line_error(code, err, "NaN/inf logits")
