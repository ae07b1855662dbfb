"""dlm train on the command line: one-line errors, bad input, reruns and interrupts from another
directory, and help for every option."""

import json
import shutil

import pytest

from conftest import debian_subset, interrupt_training_at

pytestmark = pytest.mark.usefixtures("tokenised_cache")  # the shared test cache (conftest)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """400 train / 80 validation pairs taken from the shipped validation split."""
    return debian_subset(tmp_path_factory.mktemp("data"), 400, 80)


def test_cli_train_error_is_one_line(tmp_path):
    from dlm.cli import main

    assert main(["train", "--out", str(tmp_path / "o"), "--objective", "a2d"]) == 2


@pytest.mark.parametrize("argv, message", [
    (["--tokenizer", "/does/not/exist"], "tokenizer directory /does/not/exist does not exist"),
    (["--data", "/does/not/exist"], "no train split"),
    (["--init", "/does/not/exist"], "does not exist"),
    (["--max-steps", "0"], "--max-steps must be >= 1"),
    (["--max-steps", "10", "--warmup-steps", "10"], "--warmup-steps 10 must be below --max-steps 10"),
    (["--init", "tiny-ar", "--d-model", "64"], "--d-model is for a new model"),
    (["--seq-len", "100000"], "--seq-len 100000 exceeds the 1024 positions of the new model"),
    (["--init", "tiny-ar", "--objective", "causal", "--seq-len", "2048"], "exceeds the 1024 positions"),
    (["--continue-finished"], "holds no finished run to continue"),
])
def test_cli_train_bad_input(capsys, tmp_path, argv, message):
    from dlm.cli import main

    code = main(["train", "--out", str(tmp_path / "o"), "--no-progress", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_cli_rerun_and_interrupt_from_another_directory(tmp_path, data_dir, monkeypatch, capsys):
    """Typed paths are relative to the current directory, defaults (the tokenizer) are the shipped ones."""
    from dlm.cli import main

    shutil.copytree(data_dir, tmp_path / "d")
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--out", "o", "--data", "d", "--objective", "causal", "--arch", "llama", "--d-model", "32",
            "--n-layers", "1", "--n-heads", "2", "--mlp-hidden", "64", "--seq-len", "32", "--batch-size", "2",
            "--max-steps", "3", "--eval-every", "3", "--eval-batches", "1", "--no-progress"]
    assert main(argv) == 0
    first = capsys.readouterr()
    assert "warms up over 0 step(s), not the default 100" in first.err  # the default, shortened visibly
    assert (tmp_path / "o" / "config.json").exists()
    assert main(argv) == 0
    again = capsys.readouterr()
    assert json.loads(again.out) == json.loads(first.out) and "already holds this finished run" in again.err
    assert main(argv + ["--lr", "5e-4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--lr 0.001 -> 0.0005" in err
    interrupt_training_at(monkeypatch, 1, "signal")
    assert main([*argv[:2], "o2", *argv[3:]]) == 130
    err = capsys.readouterr().err
    assert "interrupted at step 2/3" in err and err.rstrip().endswith("dlm: interrupted")


def test_every_train_option_has_help():
    from dlm.cli import build_parser

    parser = build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]
    missing = [a.option_strings for a in train._actions if a.option_strings and not a.help]
    assert missing == []
