"""What a dlm eval run records and how it is named: the resolved model, the two seeds, the
resolved sampler options, full data digests, the run's status when it stops; eval-tasks --json."""

from __future__ import annotations

import hashlib
import json

import pytest

from dlm.cli import main

MODEL = "tiny-a2d-instruct"
SMALL = ["-o", "gen_length=8", "-o", "block_length=8"]


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def only(out, pattern):
    (path,) = out.glob(pattern)
    return path


def test_default_data_is_the_shipped_copy_whatever_the_cwd(tmp_path, monkeypatch):
    from dlm.eval.tasks import get_task
    from dlm.paths import shipped_data

    fake = tmp_path / "data" / "debian"
    fake.mkdir(parents=True)
    (fake / "test.jsonl").write_text(json.dumps({"description": "d", "synopsis": "s"}) + "\n")
    monkeypatch.chdir(tmp_path)
    task = get_task("debian")
    assert task.data == shipped_data("debian") and task.data != fake.resolve()
    assert task.files()[0].name == "test.jsonl.xz"


def test_data_digests_are_full_sha256(tmp_path):
    from dlm.eval.datafiles import fingerprint

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"x": 1}\n')
    b.write_text('{"x": 2}\n')
    combined, per_file = fingerprint([b, a])
    assert per_file == {str(a): hashlib.sha256(a.read_bytes()).hexdigest(),
                        str(b): hashlib.sha256(b.read_bytes()).hexdigest()}
    assert combined == hashlib.sha256(a.read_bytes() + b.read_bytes()).hexdigest()
    assert fingerprint([a])[0] == per_file[str(a)]  # one file: what sha256sum prints


def test_one_model_one_name_and_resolved_settings(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("dlm.models.default.DEFAULT_MODEL", MODEL)  # a tiny diffusion model as the default
    args = ["eval", "--task", "debian", "--nfe", "4,8", "--limit", 2, "--out", tmp_path, *SMALL]
    assert run_cli(*args) == 0  # no --model: the (patched) shipped default
    summary_path = only(tmp_path, "*.summary.json")
    assert summary_path.name == f"{MODEL}__debian__llada.summary.json"
    s = json.loads(summary_path.read_text())
    st = s["settings"]
    assert st["model"] == MODEL and st["model_shipped"] and st["model_requested"] is None
    assert st["model_path"].endswith(f"pretrained/{MODEL}")
    # the resolved options, not only the overridden ones; steps per budget
    assert st["options"] == {"gen_length": 8, "block_length": 8}
    assert {"temperature": 0.0, "remasking": "low_confidence", "gen_length": 8, "block_length": 8,
            "cfg_scale": 0.0}.items() <= st["resolved_options"].items()
    assert "steps" not in st["resolved_options"] and isinstance(st["resolved_options"]["mask_id"], int)
    assert [r["sampler_options"] for r in s["results"]] == [{"steps": 4}, {"steps": 8}]
    files = st["files"]
    assert st["files_sha256"] == {f: hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files}
    assert len(st["data_sha256"]) == 64
    capsys.readouterr()
    # the same model by name resumes the same run (nothing redone), and records what was typed
    lines = len(read_jsonl(only(tmp_path, "*.samples.jsonl")))
    assert run_cli(*args, "--model", MODEL, "--nfe", "4,8,16") == 0
    assert len(list(tmp_path.glob("*.summary.json"))) == 1
    assert len(read_jsonl(only(tmp_path, "*.samples.jsonl"))) == lines + 2
    s = json.loads(summary_path.read_text())
    assert s["settings"]["model_requested"] == MODEL and s["settings"]["model"] == MODEL
    assert [r["sampler_options"] for r in s["results"]] == [{"steps": 4}, {"steps": 8}, {"steps": 16}]


def test_a_checkpoint_directory_is_named_by_its_folder(tmp_path, tiny_llada_tok_dir):
    from dlm.eval.runner import model_identity

    import dlm

    ident = model_identity(dlm.load(tiny_llada_tok_dir))
    assert ident == {"model": tiny_llada_tok_dir.name, "model_path": str(tiny_llada_tok_dir.resolve()),
                     "model_shipped": False}


def test_sample_seed_selects_and_seed_samples(tmp_path):
    base = ["eval", "--model", MODEL, "--task", "debian", "--nfe", 4, "--limit", 3, *SMALL]

    def ids(out, *extra):
        assert run_cli(*base, "--out", out, *extra) == 0
        s = json.loads(only(out, "*.summary.json").read_text())
        return s, {r["id"] for r in read_jsonl(only(out, "*.samples.jsonl"))}

    s0, ids0 = ids(tmp_path / "a")
    _, ids_seed = ids(tmp_path / "b", "--seed", 5)
    s2, ids_sample = ids(tmp_path / "c", "--sample-seed", 5)
    assert ids_seed == ids0 and ids_sample != ids0
    assert (s0["settings"]["seed"], s0["settings"]["sample_seed"]) == (0, 0)
    assert (s2["settings"]["seed"], s2["settings"]["sample_seed"]) == (0, 5)


def test_sample_at_temperature_does_not_depend_on_the_batch(tmp_path):
    """Each example samples with its own seed (from --seed and its id): --batch-size changes nothing.
    (Needs dlm.generate(seed=[...]) per-row generators.)"""
    from dlm.eval.samples import example_seed

    base = ["eval", "--model", MODEL, "--task", "debian", "--nfe", 4, "--limit", 3, "-o", "temperature=0.8", *SMALL]
    out = {}
    for bs in (1, 3):
        assert run_cli(*base, "--batch-size", bs, "--out", tmp_path / str(bs)) == 0
        out[bs] = {r["id"]: r for r in read_jsonl(only(tmp_path / str(bs), "*.samples.jsonl"))}
    assert {i: r["output"] for i, r in out[1].items()} == {i: r["output"] for i, r in out[3].items()}
    assert all(r["seed"] == example_seed(0, i) for i, r in out[3].items())
    assert example_seed(0, "7") == example_seed(0, "7") != example_seed(1, "7")
    assert 0 <= example_seed(123, "abc") < 2**31


def _run(tmp_path, fail_after: int | None, exc=KeyboardInterrupt):
    """run_eval over 4 examples in batches of 2; the generation fails after ``fail_after`` batches."""
    import dlm
    import dlm.eval.runner as runner
    from dlm.eval.tasks import get_task

    real = runner.generate_batch
    calls = []

    def flaky(*a, **k):
        if fail_after is not None and len(calls) >= fail_after:
            raise exc()
        calls.append(1)
        return real(*a, **k)
    runner.generate_batch = flaky
    try:
        cfg = runner.EvalConfig(task=get_task("debian"), out_dir=tmp_path, budgets=[4], limit=4, batch_size=2,
                                options={"gen_length": 8, "block_length": 8})
        return runner.run_eval(dlm.load(MODEL), cfg)
    finally:
        runner.generate_batch = real


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupted_run_says_so_and_resumes(tmp_path, capsys, exc):
    with pytest.raises(exc):
        _run(tmp_path, 1, exc)
    s = json.loads(only(tmp_path, "*.summary.json").read_text())
    assert s["status"] == "interrupted" and "rerun the same dlm eval command" in s["resume"]
    assert s["results"][0]["examples"] == 2  # what was done is summarised
    assert "rerun the same dlm eval command" in capsys.readouterr().err
    summary = _run(tmp_path, None)
    assert summary["status"] == "complete" and "resume" not in summary and summary["results"][0]["examples"] == 4
    assert "resuming the interrupted run" in capsys.readouterr().err


def test_a_killed_run_is_reported_when_resumed(tmp_path, capsys):
    _run(tmp_path, None)
    path = only(tmp_path, "*.summary.json")
    s = json.loads(path.read_text())
    path.write_text(json.dumps({**s, "status": "running"}))  # as SIGKILL leaves it
    capsys.readouterr()
    _run(tmp_path, None)
    assert "did not finish" in capsys.readouterr().err


def test_eval_tasks_json(capsys):
    from dlm.paths import shipped_data

    assert run_cli("eval-tasks", "--json") == 0
    tasks = {t["name"]: t for t in json.loads(capsys.readouterr().out)}
    deb = tasks["debian"]
    assert deb["kind"] == "generate" and deb["default_budgets"] == [8, 16, 32, 64]
    assert deb["presets"]["eos_block"] == {"gen_length": 32, "block_length": 32, "logits_eos_inf": True}
    assert deb["options"]["max_prompt_tokens"] == 224 and deb["default_data"] == str(shipped_data("debian"))
    assert tasks["xsum"]["default_data"] is None and tasks["repair"]["primary_metric"] == "fix_10"
    assert tasks["perplexity"]["kind"] == "score" and tasks["perplexity"]["higher_is_better"] is False
    assert tasks["arith"]["default_data"] == "generated (dlm.data.arith)"
    assert run_cli("eval-tasks") == 0
    assert "eos_block" in capsys.readouterr().out


def test_model_identity_of_a_hub_snapshot_and_of_a_model_in_memory(tmp_path):
    """A Hugging Face cache snapshot is named ORG/NAME (not its revision hash); a model without a path is 'model'."""
    from types import SimpleNamespace

    from dlm.eval.runner import model_identity

    snap = tmp_path / "hub" / "models--GSAI-ML--LLaDA-8B-Instruct" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    ident = model_identity(SimpleNamespace(path=str(snap)))
    assert ident == {"model": "GSAI-ML/LLaDA-8B-Instruct", "model_path": str(snap), "model_shipped": False}
    assert model_identity(SimpleNamespace(path=None))["model"] == "model"
    cached = tmp_path / "bases" / "smollm2-135m-instruct-b179c9523d0e"
    cached.mkdir(parents=True)
    packaged = SimpleNamespace(path=str(cached), config={"dlm_base": {"name": "smollm2-135m-instruct"}})
    assert model_identity(packaged)["model"] == "smollm2-135m-instruct"
    adapter = tmp_path / "pretrained" / "smol-ar-instruct"  # built on the base, so its config names it too
    adapter.mkdir(parents=True)
    tuned = SimpleNamespace(path=str(adapter), config={"dlm_base": {"name": "smollm2-135m-instruct"}})
    assert model_identity(tuned)["model"] == "smol-ar-instruct"
