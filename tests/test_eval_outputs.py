"""Output locations of dlm eval / report / trace are checked before any model loads, and dlm
trace's sampler flags (--steps, --gen-length, --chat, ...) reach the sampler."""

from __future__ import annotations

import re

import pytest

from dlm.cli import main
from dlm.errors import DLMError
from dlm.outputs import check_output_dir, check_output_file

MODEL = "tiny-a2d-instruct"


def run_cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: the command must stop before it."""
    import dlm

    def load(*a, **k):
        raise AssertionError("the model was loaded before the bad --out was refused")
    monkeypatch.setattr(dlm, "load", load)


def test_check_output_dir(tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    assert check_output_dir(deep) == deep
    assert not (tmp_path / "a").exists()  # the check leaves nothing behind
    assert check_output_dir(tmp_path) == tmp_path and list(tmp_path.iterdir()) == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(DLMError, match="exists and is not a folder"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(DLMError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "f" / "sub")
    with pytest.raises(DLMError, match="cannot create the folder"):
        check_output_dir("/proc/dlm-test-out")


def test_check_output_file(tmp_path):
    html = tmp_path / "new" / "t.html"
    assert check_output_file(html, (".html", ".gif")) == html and not html.parent.exists()
    with pytest.raises(DLMError, match=r"must end in \.html or \.gif"):
        check_output_file(tmp_path / "t.txt", (".html", ".gif"))
    (tmp_path / "old.gif").write_bytes(b"GIF")
    with pytest.raises(DLMError, match="exists; pass --overwrite"):
        check_output_file(tmp_path / "old.gif", (".html", ".gif"))
    assert check_output_file(tmp_path / "old.gif", (".html", ".gif"), overwrite=True)
    assert (tmp_path / "old.gif").read_bytes() == b"GIF"  # checked, not touched
    (tmp_path / "d.html").mkdir()
    with pytest.raises(DLMError, match="is a folder"):
        check_output_file(tmp_path / "d.html", (".html", ".gif"), overwrite=True)


def test_bad_out_fails_before_the_model_loads(tmp_path, capsys, no_model):
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [
        (["eval", "--task", "debian", "--limit", 4, "--nfe", 4, "--out", "/proc/x"], "--out /proc/x: cannot create"),
        (["eval", "--task", "debian", "--out", afile], "exists and is not a folder"),
        (["trace", "--prompt", "hi", "--out", tmp_path / "t.txt"], "must end in .html or .gif"),
        (["trace", "--prompt", "hi", "--out", "/proc/t.html"], "--out /proc/t.html: cannot write in /proc"),
        (["trace", "--prompt", "hi", "--out", afile / "t.gif"], "exists and is not a folder"),
        (["trace", "--prompt", "hi", "--out", tmp_path / "f.html", "--fps", 0], "--fps must be > 0"),
    ]
    afile.with_suffix(".html").write_text("an earlier trace")
    cases.append((["trace", "--prompt", "hi", "--out", afile.with_suffix(".html")], "pass --overwrite"))
    for args, msg in cases:
        assert run_cli(*args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("dlm: error: ") and msg in err and err.count("\n") == 1, (args, err)


def test_report_checks_its_out_before_plotting(tmp_path, capsys, monkeypatch):
    import json

    import dlm.eval.report as report

    monkeypatch.setattr(report, "plot_task", lambda *a: (_ for _ in ()).throw(AssertionError("plotted")))
    results = tmp_path / "results"
    results.mkdir()
    summary = {"settings": {"task": "debian", "model": "m", "seed": 0, "sampler": "llada"}, "results": [],
               "primary_metric": "rouge1", "selection": {"examples": 0}}
    (results / "x.summary.json").write_text(json.dumps(summary))
    (tmp_path / "afile").write_text("x")
    assert run_cli("report", results, "--out", tmp_path / "afile") == 2
    assert "--out" in capsys.readouterr().err
    assert run_cli("report", results, "--out", "/proc/dlm-report") == 2
    assert "cannot create the folder" in capsys.readouterr().err


@pytest.mark.parametrize("option, flag", [("sampler=ar", "use --sampler"), ("seed=3", "use --seed"),
                                          ("return_dict=true", "sets return_dict itself"),
                                          ("output_history=1", "sets output_history itself"),
                                          ("chat=off", "use --chat")])
def test_trace_refuses_call_arguments_as_sampler_options(tmp_path, capsys, no_model, option, flag):
    assert run_cli("trace", "--prompt", "hi", "--out", tmp_path / "t.html", "-o", option) == 2
    err = capsys.readouterr().err
    assert f"-o {option.split('=')[0]}=... is not a sampler option" in err and flag in err


def test_eval_refuses_call_arguments_as_sampler_options(tmp_path, capsys, no_model):
    for option, flag in [("seed=3", "--sample-seed"), ("sampler=ar", "--sampler"), ("return_dict=1", "itself")]:
        assert run_cli("eval", "--task", "debian", "--out", tmp_path, "-o", option) == 2
        assert flag in capsys.readouterr().err
    assert run_cli("trace", "--prompt", "hi", "--out", tmp_path / "t.html", "--steps", 4, "-o", "steps=4") == 2
    assert "-o steps repeats --steps" in capsys.readouterr().err


def test_trace_sampler_flags_and_chat(tmp_path):
    out = tmp_path / "t.html"
    assert run_cli("trace", "--model", MODEL, "--prompt", "GNU grep searches files.", "--out", out,
                   "--gen-length", 8, "--steps", 4, "--block-length", 4, "--temperature", 0.5, "--chat", "off") == 0
    page = out.read_text()
    assert len(re.findall(r"<h3>step \d+</h3>", page)) == 5
    assert "chat off" in page and "&quot;block_length&quot;: 4" in page and "&quot;temperature&quot;: 0.5" in page
    assert "torch " in page and "float32" in page  # versions and hardware are recorded
    assert run_cli("trace", "--model", MODEL, "--prompt", "x", "--out", out, "--gen-length", 8, "--steps", 2) == 2
    assert run_cli("trace", "--model", MODEL, "--prompt", "x", "--out", out, "--gen-length", 8, "--steps", 2,
                   "--overwrite") == 0
    assert len(re.findall(r"<h3>step \d+</h3>", out.read_text())) == 3


def test_trace_chat_decides_the_prompt_wrapping():
    import dlm
    from dlm.eval.trace import trajectory

    model = dlm.load(MODEL)
    calls = []
    encode = model.encode_prompt
    model.encode_prompt = lambda text, chat=None: calls.append(chat) or encode(text, chat=chat)
    for chat in (None, True, False):
        traj = trajectory(model, "hi", chat=chat, gen_length=4, steps=2)
        assert traj["chat"] is chat
    assert calls == [None, True, False]
    assert encode("hi", chat=True) != encode("hi", chat=False)

