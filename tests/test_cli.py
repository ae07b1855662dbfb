"""The dlm command line on good and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dlm.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_default_model_json(capsys):
    code, out, err = run(capsys, "generate", "--prompt", "Hello", "--steps", "4", "--gen-length", "8", "--json")
    assert code == 0, err
    rec = json.loads(out)
    assert rec["model"] == "default" and rec["nfe"] == 4 and rec["sampler"] == "llada"
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
    (["generate", "--prompt", "x", "--gen-length", "10", "--block-length", "3"], "multiple of block_length"),
    (["generate", "--prompt", "x", "--model", "/does/not/exist"], "does not exist"),
    (["generate", "--prompt", "x", "-o", "bogus=1"], "has no option 'bogus'"),
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
    assert proc.returncode == 2 and "gen_length must be positive" in proc.stderr and "Traceback" not in proc.stderr
