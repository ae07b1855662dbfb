"""benchmarks/isd.py (the I-DLM benchmark) end to end on the shipped tiny models, small settings."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_isd", ROOT / "benchmarks" / "isd.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _bench()


@pytest.fixture(scope="module")
def result(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_isd") / "tiny.json"
    bench.main(["--model", "tiny-ar-instruct", "--limit", "3", "--strides", "2,3", "--batch-sizes", "1,2",
                "--gen-length", "12", "--prompt-tokens", "24", "--continuation-length", "8",
                "--diffusion-model", "tiny-a2d-instruct", "--diffusion-nfe", "4",
                "--micro-repeats", "2", "--micro-warmup", "1", "--out", str(out), "--no-progress"])
    return out, json.loads(out.read_text())


def test_result_file_structure(result):
    out, res = result
    assert res["benchmark"] == "isd" and res["seed"] == 0 and res["sample_seed"] == 0
    assert {"dlm", "torch", "transformers", "python"} <= set(res["versions"])
    assert {"cpu", "torch_threads", "device"} <= set(res["hardware"])
    assert res["model"]["model"] == "tiny-ar-instruct"
    assert res["diffusion_model"]["model"] == "tiny-a2d-instruct"
    assert res["settings"]["strides"] == [2, 3] and res["settings"]["batch_sizes"] == [1, 2]
    assert set(res["tasks"]) == {"summaries", "continuation"}
    for name, task in res["tasks"].items():
        assert task["selection"]["examples"] == 3
        assert task["gen_length"] == (12 if name == "summaries" else 8)
        assert [e["row"] for e in task["rows"]] == ["ar", "isd-2", "isd-3", "llada-4"]
        for e in task["rows"]:
            for k in ("rouge1", "rouge2", "rougeL"):
                assert 0 <= e[k] <= 100
            assert 0 <= e["identical_to_ar"] <= 1 and set(e["identical_to_ar_by_batch_size"]) == {"1", "2"}
            assert set(e["speed"]) == {"1", "2"}
            for s in e["speed"].values():
                assert s["tokens_per_second_median"] > 0 and s["warmup"]["seconds"] > 0
            assert s["calls"] == 2 and e["speed"]["1"]["calls"] == 3  # batches of 2: 3 examples in 2 calls
        ar, *isd, llada = task["rows"]
        assert ar["tpf"] == 1.0 and ar["acceptance_rate"] is None and ar["identical_to_ar"] == 1.0
        for e in isd:
            assert 1.0 <= e["tpf"] <= e["options"]["stride"]
            assert 0 <= e["acceptance_rate"] <= 1
            assert e["stats_mismatch_calls"] == 0  # out.stats tokens agree with the generated ids
        assert llada["sampler"] == "llada" and llada["options"]["steps"] == 4
        micro = task["forward_micro"]
        assert set(micro["by_batch_size"]) == {"1", "2"}
        for m in micro["by_batch_size"].values():
            assert m["single_token_seconds"] > 0
            assert {k: v["slots"] for k, v in m["strides"].items()} == {"2": 3, "3": 5}
            assert all(math.isfinite(v["ratio_to_single_token"]) for v in m["strides"].values())
    table = out.with_suffix(".md").read_text()
    assert "| ISD N=2 |" in table and "tok/s b2" in table and "## continuation" in table
    samples = [json.loads(line) for line in out.with_name("tiny_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 4 * 3  # tasks x rows x examples


def test_isd_equals_greedy_ar_at_t0(result):
    _, res = result
    for task in res["tasks"].values():
        for e in task["rows"]:
            if e["sampler"] == "isd":
                assert e["identical_to_ar"] == 1.0, (e["row"], e["identical_to_ar"])
                assert e["rouge1"] == task["rows"][0]["rouge1"]


def test_summaries_are_dlm_evals_selection(result):
    """The same examples `dlm eval --task debian --limit 3` picks (Task.select, prompt-length filter)."""
    import dlm
    from dlm.eval.tasks import get_task

    _, res = result
    model = dlm.load("tiny-ar-instruct")
    task = get_task("debian")
    fits = lambda ex: len(model.encode_prompt(ex.prompt)) <= task.opts["max_prompt_tokens"]  # noqa: E731
    selected, _ = task.select(task.load(), 3, 0, fits)
    out, _ = result
    ids = [s["id"] for s in map(json.loads, out.with_name("tiny_samples.jsonl").read_text().splitlines())
           if s["task"] == "summaries" and s["row"] == "ar"]
    assert ids == [ex.id for ex in selected]


@pytest.mark.parametrize("argv, message", [
    (["--strides", "1"], "--strides must all be >= 2"),
    (["--strides", "2,x"], "comma-separated integers"),
    (["--batch-sizes", "0"], "--batch-sizes must all be >= 1"),
    (["--tasks", "translation"], "unknown task 'translation'"),
    (["--limit", "0"], "--limit must be >= 1"),
    (["--model", "no-such-model"], "--model no-such-model"),
    (["--model", "tiny-a2d-instruct"], "is a diffusion model"),
])
def test_bad_arguments_exit_2(bench, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(argv + ["--no-progress"])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_plot_draws_every_task(result, tmp_path):
    """benchmarks/plot_isd.py turns result files into one PNG (a panel row per task); a file that is not
    a result is one error line."""
    from PIL import Image

    out, _ = result
    png = tmp_path / "isd.png"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plot_isd.py"), str(out), "--out", str(png)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with Image.open(png) as im:
        assert im.size[1] > 600 and len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 10  # two rows of bars
    (tmp_path / "other.json").write_text('{"benchmark": "generate"}')
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plot_isd.py"), str(tmp_path / "other.json"),
                           "--out", str(png)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "not a benchmarks/isd.py result" in proc.stderr and "Traceback" not in proc.stderr
