"""dlm eval / report / trace / lm-eval on a handful of examples with the shipped tiny models."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dlm.cli import main
from dlm.eval.diagnostics import adjacent_repetition, degenerate, distinct_n, premature_stop
from dlm.eval.tasks.gsm8k import extract_flexible, extract_strict, reference_answer
from dlm.eval.tasks.repair import corrupt_tokens

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny-a2d-instruct"
SMALL = ["-o", "gen_length=8", "-o", "block_length=8"]

ARTICLES = [
    ("The city council approved a new budget on Monday after a long debate about school funding.",
     "Council approves budget after school funding debate."),
    ("A new species of frog was found in the rainforest by a team of biologists from the university.",
     "Biologists find a new frog species."),
    ("Heavy rain caused flooding in several towns, and roads were closed for most of the weekend.",
     "Flooding closes roads in several towns."),
    ("The football club signed a young striker from a rival team for a record fee this summer.",
     "Club signs striker for record fee."),
]


def run_cli(*args: str) -> int:
    return main([str(a) for a in args])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- metrics and parsing ----------------------------------------------------------------------
def test_diagnostics():
    assert adjacent_repetition([5, 5, 5, 6]) == pytest.approx(2 / 3)
    assert adjacent_repetition([1]) == 0.0
    assert distinct_n([1, 2, 1, 2], 1) == 0.5
    assert distinct_n([1, 2, 1, 2], 2) == pytest.approx(2 / 3)
    assert distinct_n([], 2) == 1.0
    assert degenerate([], "") and degenerate([9, 9, 9, 9, 8], "x x x x y")
    assert degenerate([7, 8, 7, 9, 7, 10, 7], "a b a c a d a")  # one token is more than half
    assert not degenerate([1, 2, 3, 4], "a b c d") and not degenerate([4, 4], "ab ab")  # too short to judge
    assert premature_stop(2, True, 12) and not premature_stop(3, True, 12)
    assert not premature_stop(0, False, 12)  # ran out of room, did not stop


def test_gsm8k_answer_extraction():
    assert reference_answer("She has 3 + 4 = 7 apples.\n#### 1,200") == "1200"
    assert extract_strict("so the answer is #### $72.") == "72"
    assert extract_strict("the answer is 72") is None
    assert extract_flexible("3 apples and then 72.0 more") == "72"
    assert extract_flexible("no number") is None


def test_corruption_draws():
    tokens = list(range(100, 140))
    a, pos = corrupt_tokens(tokens, 0.3, 42 + 5, 7, 8192)
    b, pos2 = corrupt_tokens(tokens, 0.3, 42 + 5, 7, 8192)
    assert (a, pos) == (b, pos2) and len(pos) == 12 and pos == sorted(pos)
    assert all(a[i] != tokens[i] and 7 <= a[i] < 8192 for i in pos)
    assert all(a[i] == tokens[i] for i in range(len(tokens)) if i not in pos)
    assert len(corrupt_tokens([5, 6], 0.1, 0, 7, 8192)[1]) == 1  # at least one position


# -- data layouts --------------------------------------------------------------------------------
def write_xsum_parquet(root: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = root / "xsum" / "data"
    d.mkdir(parents=True)
    table = pa.table({"document": [a for a, _ in ARTICLES], "summary": [s for _, s in ARTICLES],
                      "id": [f"x{i}" for i in range(len(ARTICLES))]})
    pq.write_table(table, d / "test-00000-of-00001.parquet")
    pq.write_table(table.slice(0, 1), d / "train-00000-of-00001.parquet")  # another split: not read
    return root / "xsum"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("task", ["xsum", "cnn_dailymail", "pubmed", "arxiv"])
def test_summarization_tasks(tmp_path, task):
    if task == "xsum":
        data = write_xsum_parquet(tmp_path)
    elif task == "cnn_dailymail":
        data = write_jsonl(tmp_path / "cnn" / "3.0.0" / "test.jsonl",
                           [{"article": a, "highlights": s, "id": str(i)} for i, (a, s) in enumerate(ARTICLES)]).parents[1]
    else:  # ccdv layout as a JSON list file
        data = tmp_path / f"{task}.json"
        data.write_text(json.dumps([{"article": a, "abstract": s} for a, s in ARTICLES]))
    out = tmp_path / "results"
    assert run_cli("eval", "--model", MODEL, "--task", task, "--data", data, "--nfe", "4,8", "--limit", 3,
                   "--batch-size", 2, "--out", out, *SMALL) == 0
    (samples,) = out.glob("*.samples.jsonl")
    rows = read_jsonl(samples)
    assert len(rows) == 6 and {r["budget"] for r in rows} == {4, 8} and {r["nfe"] for r in rows} == {4, 8}
    for r in rows:
        assert r["prompt"].split("\n\n")[0].startswith("Summarize the following")
        assert {"output", "reference", "seconds", "rouge1", "premature_stop", "distinct_2"} <= set(r)
        assert 0 <= r["rouge1"] <= 100 and r["answer_tokens"] <= 8
    summary = json.loads(next(out.glob("*.summary.json")).read_text())
    assert summary["status"] == "complete" and summary["settings"]["options"]["gen_length"] == 8
    assert summary["settings"]["data_sha256"] and summary["versions"]["torch"] and summary["hardware"]["cpu"]
    res = {r["budget"]: r for r in summary["results"]}
    assert set(res) == {4, 8} and res[4]["examples"] == 3 and res[8]["mean_nfe"] == 8
    mean_r1 = sum(r["rouge1"] for r in rows if r["budget"] == 4) / 3
    assert res[4]["rouge1"] == pytest.approx(mean_r1)
    assert res[4]["tokens_per_pass"] == pytest.approx(sum(r["answer_tokens"] for r in rows if r["budget"] == 4) / 12)


def test_summarization_presets_follow_the_paper():
    from dlm.eval.tasks import TASKS

    assert TASKS["xsum"].presets["default"] == {"gen_length": 128, "block_length": 128}
    assert TASKS["arxiv"].presets["eos_block"] == {"gen_length": 256, "block_length": 32, "logits_eos_inf": True}
    assert TASKS["debian"].presets["default"] == {"gen_length": 32, "block_length": 32}


def test_source_cut_to_1500_words(tmp_path):
    from dlm.eval.tasks import get_task

    data = tmp_path / "x.jsonl"
    write_jsonl(data, [{"document": " ".join(f"w{i}" for i in range(2000)), "summary": "s"}])
    (ex,) = get_task("xsum", data).load()
    instruction, source = ex.prompt.split("\n\n", 1)
    assert instruction == "Summarize the following text in one sentence:" and len(source.split()) == 1500


def test_debian_task_uses_shipped_data_and_the_fine_tuning_prompt(tmp_path):
    out = tmp_path / "r"
    assert run_cli("eval", "--model", MODEL, "--task", "debian", "--nfe", "8", "--limit", 4, "--out", out) == 0
    rows = read_jsonl(next(out.glob("*.samples.jsonl")))
    assert len(rows) == 4 and all(r["prompt"].startswith("Summarize this package description in one line:") for r in rows)
    summary = json.loads(next(out.glob("*.summary.json")).read_text())
    assert summary["settings"]["options"] == {"gen_length": 32, "block_length": 32}
    assert summary["settings"]["files"][0].endswith("test.jsonl.xz")


def test_gsm8k(tmp_path):
    rows = [{"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
             "answer": f"{a} + {b} = {a + b}\n#### {a + b}"} for a, b in [(2, 3), (4, 5), (10, 1)]]
    data = write_jsonl(tmp_path / "gsm8k" / "main" / "test.jsonl", rows).parents[1]
    out = tmp_path / "r"
    assert run_cli("eval", "--model", MODEL, "--task", "gsm8k", "--data", data, "--nfe", "8", "--out", out,
                   "-o", "gen_length=16", "-o", "block_length=8") == 0
    got = read_jsonl(next(out.glob("*.samples.jsonl")))
    assert len(got) == 3 and {r["reference"] for r in got} == {"5", "9", "11"}
    assert all(r["exact_match_flexible"] in (0.0, 100.0) and "extracted_strict" in r for r in got)
    # premature stop is judged against the worked solution's length, not the bare number
    assert all(r["reference_tokens"] > 3 for r in got)


def test_perplexity_task(tmp_path):
    text = tmp_path / "held_out.txt"
    text.write_text("GNU grep searches one or more input files for lines containing a match. " * 40)
    out = tmp_path / "r"
    assert run_cli("eval", "--model", "tiny-a2d", "--task", "perplexity", "--data", text, "--nfe", "2,4",
                   "-t", "seq_len=64", "--out", out, "--limit", 3) == 0
    s = json.loads(next(out.glob("*.summary.json")).read_text())
    assert [r["budget"] for r in s["results"]] == [2, 4] and all(r["examples"] == 3 for r in s["results"])
    assert all(1 < r["perplexity"] < 8192 for r in s["results"]) and s["higher_is_better"] is False
    assert s["settings"]["packing"]["dropped_tail_tokens"] >= 0
    # a causal LM is exact with one pass per block; another budget is refused
    assert run_cli("eval", "--model", "tiny-ar", "--task", "perplexity", "--data", text, "-t", "seq_len=64",
                   "--out", out, "--limit", 3) == 0
    assert run_cli("eval", "--model", "tiny-ar", "--task", "perplexity", "--data", text, "--nfe", "8",
                   "--out", out) == 2
    # records: the text field is named by an option (here the shipped Debian descriptions)
    assert run_cli("eval", "--model", "tiny-ar", "--task", "perplexity", "--data", ROOT / "data" / "debian",
                   "-t", "field=description", "-t", "seq_len=64", "--limit", 2, "--out", out, "--name", "deb") == 0
    s = json.loads((out / "deb.summary.json").read_text())
    assert s["settings"]["files"][0].endswith("test.jsonl.xz") and 1 < s["results"][0]["perplexity"] < 8192


@pytest.mark.parametrize("model_name", ["tiny-mdm", "tiny-a2d"])
def test_repair_task(tmp_path, model_name):
    import dlm
    import torch

    data = tmp_path / "texts.txt"
    data.write_text("\n".join(a for a, _ in ARTICLES) + "\n")
    out = tmp_path / "r"
    assert run_cli("eval", "--model", model_name, "--task", "repair", "--data", data, "--out", out,
                   "-t", "rates=10,50", "--batch-size", 4) == 0
    rows = {r["id"]: r for r in read_jsonl(next(out.glob("*.samples.jsonl")))}
    s = json.loads(next(out.glob("*.summary.json")).read_text())
    assert len(rows) == 4 and s["primary_metric"] == "fix_10" and s["results"][0]["mean_nfe"] == 1
    # the padded batch scores as each text alone: BOS + corrupted tokens, one pass, argmax
    model = dlm.load(model_name)
    for i, (text, _) in enumerate(ARTICLES):
        gold = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        for rate in (10, 50):
            bad, pos = corrupt_tokens(gold, rate / 100, 42 + i, 7, 8192)
            with torch.no_grad():
                pred = model(torch.tensor([[0] + bad])).logits[0, 1:].argmax(-1).tolist()
            clean = [j for j in range(len(gold)) if j not in pos]
            assert rows[str(i)][f"fix_{rate}"] == pytest.approx(100 * sum(pred[j] == gold[j] for j in pos) / len(pos))
            assert rows[str(i)][f"clean_{rate}"] == pytest.approx(100 * sum(pred[j] == gold[j] for j in clean) / len(clean))


def test_eval_resumes_where_it_stopped(tmp_path):
    args = ["eval", "--model", MODEL, "--task", "debian", "--nfe", "4,8", "--limit", 5, "--batch-size", 2, *SMALL]
    fresh, resumed = tmp_path / "fresh", tmp_path / "resumed"
    assert run_cli(*args, "--out", fresh) == 0
    samples = next(fresh.glob("*.samples.jsonl"))
    lines = samples.read_text().splitlines(keepends=True)
    resumed.mkdir()
    for f in fresh.glob("*.summary.json"):
        (resumed / f.name).write_text(f.read_text())
    (resumed / samples.name).write_text("".join(lines[:3]) + lines[3][:20])  # killed mid-line
    assert run_cli(*args, "--out", resumed) == 0
    redo = read_jsonl(resumed / samples.name)
    key = lambda r: (r["budget"], r["id"])  # noqa: E731
    assert len(redo) == 10 and len({key(r) for r in redo}) == 10
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert sorted(map(strip, redo), key=key) == sorted(map(strip, read_jsonl(samples)), key=key)
    # a larger limit adds examples, and the earlier ones are kept
    assert run_cli(*args[:-6], "--limit", 6, "--batch-size", 2, *SMALL, "--out", resumed) == 0
    assert len(read_jsonl(resumed / samples.name)) == 12


def test_eval_refuses_changed_settings_and_bad_input(tmp_path, capsys):
    base = ["eval", "--model", MODEL, "--task", "debian", "--limit", 2, "--out", tmp_path]
    assert run_cli(*base, "--nfe", "4", *SMALL) == 0
    capsys.readouterr()
    assert run_cli(*base, "--nfe", "4", "-o", "gen_length=16", "-o", "block_length=16") == 2
    assert "other settings" in capsys.readouterr().err
    assert run_cli(*base, "--nfe", "4", "-o", "gen_length=16", "-o", "block_length=16", "--overwrite") == 0
    for bad, msg in [(["--nfe", "4,x"], "--nfe must be integers"), (["--nfe", "6", "-o", "block_length=4"],
                     "multiple of the number of blocks"), (["--nfe", "8", "-o", "steps=8"], "leave out -o steps"),
                     (["--preset", "nope"], "no preset 'nope'"), (["-t", "colour=red"], "no option 'colour'"),
                     (["--sampler", "ar"], "causal LMs only")]:
        assert run_cli(*base, "--name", "bad", *bad) == 2, bad
        assert msg in capsys.readouterr().err
    assert run_cli("eval", "--model", MODEL, "--task", "xsum", "--out", tmp_path) == 2
    assert "needs --data" in capsys.readouterr().err
    assert run_cli("eval", "--model", MODEL, "--task", "xsum", "--data", tmp_path / "missing", "--out", tmp_path) == 2
    assert "does not exist" in capsys.readouterr().err


def test_ar_model_eval_has_no_budget(tmp_path, capsys):
    out = tmp_path / "r"
    assert run_cli("eval", "--model", "tiny-ar-instruct", "--task", "debian", "--limit", 3, "--out", out) == 0
    s = json.loads(next(out.glob("*.summary.json")).read_text())
    assert s["settings"]["sampler"] == "ar" and s["results"][0]["budget"] is None
    assert 1 <= s["results"][0]["mean_nfe"] <= 32
    rows = read_jsonl(next(out.glob("*.samples.jsonl")))  # one batch of 3: nfe is the batch's, forwards the row's
    assert len({r["nfe"] for r in rows}) == 1 and all(r["answer_tokens"] <= r["forwards"] <= r["nfe"] for r in rows)
    assert s["results"][0]["tokens_per_pass"] == pytest.approx(sum(r["answer_tokens"] for r in rows)
                                                               / sum(r["forwards"] for r in rows))
    assert run_cli("eval", "--model", "tiny-ar-instruct", "--task", "debian", "--nfe", "8", "--out", out) == 2
    assert "no step budget" in capsys.readouterr().err


# -- report and trace ---------------------------------------------------------------------------
def test_report_writes_curves_and_table(tmp_path):
    from PIL import Image

    out = tmp_path / "results"
    assert run_cli("eval", "--model", MODEL, "--task", "debian", "--nfe", "4,8", "--limit", 3, "--out", out, *SMALL) == 0
    assert run_cli("eval", "--model", "tiny-ar-instruct", "--task", "debian", "--limit", 3, "--out", out,
                   "-o", "gen_length=8") == 0
    assert run_cli("report", out, "--out", tmp_path / "rep") == 0
    png = tmp_path / "rep" / "debian.png"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 300
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 10  # curves, not a blank canvas
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## debian" in md and "](debian.png)" in md
    assert "| tiny-a2d-instruct / llada | 4 | 3 |" in md and "| tiny-a2d-instruct / llada | 8 | 3 |" in md
    assert "| tiny-ar-instruct / ar | - | 3 |" in md and "seed 0" in md and "torch 2." in md
    assert run_cli("report", tmp_path / "rep") == 2  # no summaries there


def test_report_common_scores_runs_on_shared_examples(tmp_path, capsys):
    out = tmp_path / "results"
    assert run_cli("eval", "--model", MODEL, "--task", "debian", "--nfe", "4", "--limit", 2, "--out", out, *SMALL) == 0
    assert run_cli("eval", "--model", "tiny-ar-instruct", "--task", "debian", "--limit", 5, "--out", out,
                   "-o", "gen_length=8") == 0
    ar = read_jsonl(next(out.glob("tiny-ar-instruct*.samples.jsonl")))
    assert run_cli("report", out, "--out", tmp_path / "all") == 0
    assert "| tiny-ar-instruct / ar | - | 5 |" in (tmp_path / "all" / "report.md").read_text()
    assert run_cli("report", out, "--out", tmp_path / "rep", "--common") == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "on the 2 examples that all 2 runs scored" in md and "| tiny-a2d-instruct / llada | 4 | 2 |" in md
    row = next(line for line in md.splitlines() if line.startswith("| tiny-ar-instruct / ar | - | 2 |"))
    ids = {r["id"] for r in read_jsonl(next(out.glob(f"{MODEL}*.samples.jsonl")))}  # --limit 2: a prefix of 5
    shared = [r for r in ar if r["id"] in ids]
    assert len(shared) == 2 and row.split(" | ")[3] == f"{sum(r['rouge1'] for r in shared) / 2:.2f}"
    next(out.glob("tiny-ar-instruct*.samples.jsonl")).unlink()
    assert run_cli("report", out, "--out", tmp_path / "x", "--common") == 2
    assert "samples file" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".html", ".gif"])
def test_trace(tmp_path, suffix):
    out = tmp_path / f"trace{suffix}"
    assert run_cli("trace", "--model", MODEL, "--prompt", "Summarize this package description in one line:\n\n"
                   "GNU grep searches files for lines that match a pattern.", "--out", out,
                   "-o", "gen_length=8", "-o", "steps=4") == 0
    if suffix == ".html":
        page = out.read_text()
        assert page.startswith("<!doctype html>") and len(re.findall(r"<h3>step \d+</h3>", page)) == 5  # start + 4 steps
        assert page.count('class="c new"') == 8  # every position is committed exactly once
    else:
        from PIL import Image

        with Image.open(out) as im:
            assert im.format == "GIF" and im.n_frames == 5
    assert run_cli("trace", "--model", MODEL, "--prompt", "x", "--out", tmp_path / "t.txt") == 2


# -- lm-evaluation-harness ----------------------------------------------------------------------
@pytest.mark.parametrize("model", ["tiny-a2d-instruct", "tiny-ar-instruct"])
def test_lm_eval_plugin_runs_a_local_task(tmp_path, model):
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    cmd = [sys.executable, "-m", "dlm.cli", "lm-eval", "run", "--model", "dlm",
           "--model_args", f"pretrained={model},mc_num=8,mc_batch_size=4,steps=16", "--device", "cpu",
           "--tasks", "dlm_tiny_gen,dlm_tiny_mc,dlm_tiny_ppl", "--include_path", "tests/fixtures/lm_eval",
           "--output_path", str(tmp_path / "out"), "--log_samples", "--apply_chat_template"]
    if model == "tiny-ar-instruct":
        cmd[cmd.index("--model_args") + 1] = f"pretrained={model}"
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (results,) = (tmp_path / "out").rglob("results_*.json")
    res = json.loads(results.read_text())["results"]
    assert 0 <= res["dlm_tiny_mc"]["acc,none"] <= 1 and 0 <= res["dlm_tiny_gen"]["exact_match,none"] <= 1
    assert 0 < res["dlm_tiny_ppl"]["bits_per_byte,none"] < 8  # a trained model beats uniform bytes
    gen = [json.loads(line) for f in (tmp_path / "out").rglob("samples_dlm_tiny_gen_*.jsonl")
           for line in f.read_text().splitlines()]
    assert len(gen) == 3 and all(isinstance(g["resps"][0][0], str) and "\n" not in g["resps"][0][0] for g in gen)
    assert any(g["resps"][0][0].strip() for g in gen)  # trained models answer something


def test_lm_eval_plugin_rejects_unknown_args():
    from dlm.errors import DLMError
    from dlm.eval.lm_eval_plugin import DLMHarnessModel

    with pytest.raises(DLMError, match="unknown argument 'stepz'"):
        DLMHarnessModel(pretrained=MODEL, stepz=4)
    with pytest.raises(DLMError, match="automatic batch sizes"):
        DLMHarnessModel(pretrained=MODEL, batch_size="auto")
    with pytest.raises(DLMError, match="pass --device cpu"):
        if not __import__("torch").cuda.is_available():
            DLMHarnessModel(pretrained=MODEL, device="cuda:0")
        else:
            raise DLMError("pass --device cpu")


def test_lead_baseline(tmp_path, capsys):
    """--baseline lead-N answers with the first N words of each source, scored like a model's answers,
    on the same example selection; a sampler, budgets or a task without sources are refused."""
    data = tmp_path / "xsum.json"
    data.write_text(json.dumps([{"document": a, "summary": s} for a, s in ARTICLES]))
    out = tmp_path / "results"
    assert run_cli("eval", "--model", MODEL, "--task", "xsum", "--data", data, "--baseline", "lead-3",
                   "--out", out) == 0
    rows = read_jsonl(out / f"{MODEL}__xsum__lead-3.samples.jsonl")
    assert [r["output"] for r in sorted(rows, key=lambda r: int(r["id"]))] == [
        " ".join(a.split()[:3]) for a, _ in ARTICLES]
    from dlm.eval.rouge import rouge_per_sample

    for r in rows:
        assert r["nfe"] == 0 and r["rouge1"] == pytest.approx(rouge_per_sample([r["output"]], [r["reference"]])[0]["rouge1"])
    summary = json.loads((out / f"{MODEL}__xsum__lead-3.summary.json").read_text())
    (res,) = summary["results"]
    assert summary["settings"]["sampler"] == "lead-3" and res["examples"] == 4 and res["tokens_per_pass"] is None
    assert res["rouge1"] > 0
    for bad in (["--baseline", "lead-0"], ["--baseline", "first-6"], ["--baseline", "lead-3", "--nfe", "8"],
                ["--baseline", "lead-3", "--sampler", "llada"]):
        capsys.readouterr()
        assert run_cli("eval", "--model", MODEL, "--task", "xsum", "--data", data, "--out", tmp_path / "b", *bad) == 2
        assert "lead" in capsys.readouterr().err
    ready = write_jsonl(tmp_path / "ready.jsonl", [{"prompt": "Summarize: x y z", "reference": "x"}])
    assert run_cli("eval", "--model", MODEL, "--task", "xsum", "--data", ready, "--baseline", "lead-3",
                   "--out", tmp_path / "c") == 2
    assert "source" in capsys.readouterr().err
