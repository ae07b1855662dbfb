"""``dlm bench``: runs side by side on one model, the timing protocol's records, ratios against a
baseline, prompts (Debian, text, seeded random ids) and bad input refused before anything runs."""

from __future__ import annotations

import json

import pytest
import torch

import dlm
from dlm.bench.prompts import random_prompts, special_ids
from dlm.bench.report import p90
from dlm.bench.specs import is_greedy, parse_runs, parse_spec
from dlm.cli import main
from dlm.errors import DLMError

PROMPTS = ["--prompt", "GNU grep searches files for lines that match a pattern.",
           "--prompt", "Python 3 bindings for the YAML parser and emitter."]


def run(capsys, *argv):
    code = main(["bench", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def llada_result(tmp_path_factory):
    """Three llada runs on tiny-a2d-instruct over two Debian prompts in one batch: the baseline, the same
    options written differently (identical output), and half the steps."""
    out = tmp_path_factory.mktemp("bench") / "res"
    code = main(["bench", "--model", "tiny-a2d-instruct", "--set", "gen_length=8", "--num-prompts", "2",
                 "--batch-size", "2", "--repeats", "2", "--no-progress", "--out", str(out),
                 "--run", "full: llada steps=8", "--run", "llada steps=8 block_length=8",
                 "--run", "half: llada steps=4", "--baseline", "full"])
    assert code == 0
    return out, json.loads((out / "bench.json").read_text())


def test_llada_runs_side_by_side(llada_result):
    out, rec = llada_result
    runs = {r["label"]: r for r in rec["runs"]}
    assert list(runs) == ["full", "llada steps=8 block_length=8", "half"]  # the default label is the spec
    full, same, half = runs.values()
    assert full["nfe_mean"] == 8 and half["nfe_mean"] == 4 and half["nfe_ratio"] == 0.5
    assert full["same_as_baseline"] == 1.0 and same["same_as_baseline"] == 1.0 and same["answers"] == full["answers"]
    assert full["tokens_per_second_ratio"] == 1.0 and full["latency_speedup"] == 1.0
    for r in runs.values():
        assert r["greedy"] and r["deterministic"]
        assert r["resolved_options"]["gen_length"] == 8 and r["options"]["gen_length"] == 8  # the shared --set
        assert r["tokens_per_second"] > 0 and r["latency_speedup"] > 0 and r["tokens_per_second_ratio"] > 0
        assert 0 <= r["completion_tokens_mean"] <= 8 and r["prompt_tokens_mean"] > 20
        assert r["tokens_per_forward"] == pytest.approx(r["completion_tokens_mean"] / r["nfe_mean"])
        assert r["latency_p90"] >= r["latency_median"] > 0 and r["cold_seconds"] > 0
        assert r["peak_memory_bytes"] > 0 and r["peak_memory_kind"] == "process_peak_rss"
        assert r["forwards_per_row_mean"] is None  # llada reports no per-row forwards
        assert r["cold"]["phase"] == "cold" and len(r["calls"]) == 2  # 2 repeats x 1 batch
        assert all(c["prompts"] == [0, 1] and len(c["completion_tokens"]) == 2 for c in r["calls"])
        assert len(r["answer_texts"]) == 2
    assert runs["half"]["resolved_options"]["steps"] == 4 and full["resolved_options"]["block_length"] == 8
    # interleaved: the cold calls first, then per repeat every run in turn
    assert [r["cold"]["order"] for r in runs.values()] == [0, 1, 2]
    assert [[c["order"] for c in r["calls"]] for r in runs.values()] == [[3, 6], [4, 7], [5, 8]]
    st = rec["settings"]
    assert st["baseline"] == st["reference"] == "full" and st["repeats"] == 2 and st["batch_size"] == 2
    assert st["seed"] == 0 and st["device"] == "cpu" and st["dtype"] == "float32"
    assert st["shared_options"] == {"gen_length": 8}
    assert st["prompts"]["kind"] == "debian" and st["prompts"]["count"] == 2 and len(rec["prompts"]) == 2
    assert [r["spec"] for r in st["runs"]] == ["full: llada steps=8", "llada steps=8 block_length=8",
                                              "half: llada steps=4"]
    assert {"dlm", "torch", "transformers", "python"} <= set(rec["versions"])
    assert {"cpu", "torch_threads", "device"} <= set(rec["hardware"]) and rec["date"]
    assert rec["model"]["model"] == "tiny-a2d-instruct"
    table = (out / "bench.md").read_text()
    assert "| full | llada |" in table and "| half | llada |" in table and "speedup" in table


def test_debian_prompts_are_the_eval_prompts(llada_result):
    from dlm.eval.tasks import get_task

    _, rec = llada_result
    model = dlm.load("tiny-a2d-instruct")
    examples = get_task("debian").load_for(model)
    fitting = [ex for ex in examples if len(model.encode_prompt(ex.prompt)) <= 224][:2]  # file order
    assert [p["text"] for p in rec["prompts"]] == [ex.prompt for ex in fitting]
    assert [p["ids"] for p in rec["prompts"]] == [model.encode_prompt(ex.prompt) for ex in fitting]


def test_ar_and_isd_on_a_causal_model(capsys, tmp_path):
    out = tmp_path / "b.json"
    code, stdout, err = run(capsys, "--model", "tiny-ar-instruct", "--set", "gen_length=8", *PROMPTS,
                            "--run", "ar", "--run", "isd3: isd stride=3", "--baseline", "ar", "--repeats", "1",
                            "--json", str(out), "--threads", "1")
    assert code == 0, err
    rec = json.loads(out.read_text())
    ar, isd = rec["runs"]
    assert isd["same_as_baseline"] == 1.0  # at T = 0 isd's output is greedy ar's, token for token
    assert ar["forwards_per_row_mean"] is not None and isd["forwards_per_row_mean"] is not None
    assert isd["tokens_per_row_forward"] > 0 and "acceptance_rate" in isd["calls"][0]["stats"]
    assert rec["settings"]["threads"] == 1 and rec["hardware"]["torch_threads"] == 1
    assert rec["settings"]["prompts"]["kind"] == "--prompt" and len(ar["calls"]) == 2  # batch size 1
    assert "| isd3 | isd |" in stdout and "tok/row-fwd" in stdout
    assert "cold" in err and "repeat 1/1" in err  # progress lines on stderr


def test_sampled_runs_have_no_agreement_figure(capsys, tmp_path):
    out = tmp_path / "b.json"
    code, _, err = run(capsys, "--model", "tiny-a2d-instruct", "--set", "gen_length=4", "--set", "steps=4",
                       *PROMPTS[:2], "--run", "llada", "--run", "hot: llada temperature=1.0",
                       "--repeats", "1", "--no-progress", "--json", str(out))
    assert code == 0, err
    greedy, hot = json.loads(out.read_text())["runs"]
    assert greedy["same_as_baseline"] == 1.0 and hot["same_as_baseline"] is None and not hot["greedy"]
    assert "tokens_per_second_ratio" not in hot  # no --baseline: no ratios


def test_random_prompts_are_reproducible(capsys, tmp_path, tiny_llada_dir):
    files = [tmp_path / "a.json", tmp_path / "b.json"]
    for f in files:
        code, _, err = run(capsys, "--model", str(tiny_llada_dir), "--random-prompts", "5", "--num-prompts", "3",
                           "--seed", "7", "--set", "gen_length=4", "--run", "llada steps=2", "--repeats", "1",
                           "--no-progress", "--json", str(f))
        assert code == 0, err
    a, b = (json.loads(f.read_text()) for f in files)
    ids = [p["ids"] for p in a["prompts"]]
    assert ids == [p["ids"] for p in b["prompts"]] and len(ids) == 3 and all(len(p) == 5 for p in ids)
    model = dlm.load(str(tiny_llada_dir))
    specials = special_ids(model)
    assert {model.facts.mask_id, model.facts.pad_id, *model.facts.eos_ids} <= set(specials)
    assert not set(sum(ids, [])) & set(specials)
    # the documented recipe
    allowed = torch.tensor([i for i in range(model.facts.vocab_size) if i not in specials])
    want = allowed[torch.randint(len(allowed), (3, 5), generator=torch.Generator().manual_seed(7))]
    assert ids == want.tolist() == random_prompts(model, 3, 5, 7).ids
    src = a["settings"]["prompts"]
    assert src["kind"] == "random" and src["seed"] == 7 and src["excluded_ids"] == specials and "recipe" in src
    assert "answer_texts" not in a["runs"][0]  # no tokenizer


def test_text_prompts_need_a_tokenizer(capsys, tiny_llada_dir):
    code, _, err = run(capsys, "--model", str(tiny_llada_dir), "--run", "llada", "--no-progress")
    assert code == 2 and "--random-prompts" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["--run", "bogus steps=4"], "unknown sampler 'bogus'"),
    (["--run", "llada bogus=1"], "--run 'llada bogus=1': sampler 'llada' has no option 'bogus'"),
    (["--run", "llada steps=many"], "option 'steps' must be an integer"),
    (["--run", "llada steps"], "expects KEY=VALUE"),
    (["--run", "llada seed=3"], "not a sampler option (use --seed)"),
    (["--run", "llada", "--baseline", "nope"], "--baseline 'nope' is not a run label"),
    (["--run", "a: llada", "--run", "b: ar", "--set", "steps=4"], "does not apply to run 'b'"),
    (["--run", "x: llada", "--run", "x: llada steps=4"], "two runs are labelled 'x'"),
    (["--run", "ar"], "decodes causal LMs only"),
    (["--run", "llada gen_length=10 block_length=3"], "multiple of block_length"),
    (["--run", "llada", "--repeats", "0"], "--repeats must be >= 1"),
    (["--run", "llada", "--json", "FILE/x.json"], "exists and is not a folder"),
    (["--run", "llada", "--markdown", "out.txt"], "--markdown must end in .md"),
])
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, argv, message):
    blocker = tmp_path / "FILE"
    blocker.write_text("")
    argv = [a.replace("FILE", str(blocker)) for a in argv]
    out = tmp_path / "res"
    code, stdout, err = run(capsys, "--model", "tiny-a2d-instruct", "--set", "gen_length=4", "--no-progress",
                            *PROMPTS[:2], "--out", str(out), *argv)
    assert code == 2 and message in err, err
    assert err.startswith("dlm: error:") and err.count("\n") == 1 and stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]  # nothing written, no folder made


def test_ctrl_c_is_one_line_and_writes_nothing(capsys, tmp_path, monkeypatch):
    import dlm.bench.measure as measure

    calls = []
    real = measure.call

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(measure, "call", interrupted)
    code, stdout, err = run(capsys, "--model", "tiny-a2d-instruct", "--set", "gen_length=4", "--no-progress",
                            *PROMPTS[:2], "--run", "llada steps=2", "--out", str(tmp_path / "res"))
    assert code == 130, err
    assert err == "dlm: interrupted\n" and stdout == "" and not (tmp_path / "res").exists()


def test_spec_parsing():
    s = parse_spec("dual09: llada steps=4 remasking=random window_logits=false")
    assert (s.label, s.sampler, s.own) == ("dual09", "llada", {"steps": 4, "remasking": "random",
                                                                "window_logits": False})
    assert parse_spec("two words:  ar gen-length=8").own == {"gen_length": 8}  # label with a space, dashes
    assert parse_spec("llada   steps=4").label == "llada steps=4"
    assert parse_spec("llada mask_id=3 x=a:b").label == "llada mask_id=3 x=a:b"  # ':' after an '=' is a value
    specs, shared = parse_runs(["llada steps=8", "ar gen_length=4"], ["gen_length=16"])
    assert shared == {"gen_length": 16} and specs[0].options == {"gen_length": 16, "steps": 8}
    assert specs[1].options == {"gen_length": 4}  # a run's own value overrides the shared one
    with pytest.raises(DLMError, match="names no sampler"):
        parse_spec("label:")
    with pytest.raises(DLMError, match="given twice"):
        parse_spec("llada steps=4 steps=8")


def test_greedy_and_p90():
    assert is_greedy({"temperature": 0.0}) and is_greedy({"stride": 3}) and not is_greedy({"temperature": 0.7})
    assert not is_greedy({"temperature": 0.0, "remasking": "random"})
    assert p90([1.0]) == 1.0 and p90([3.0, 1.0, 2.0]) == 3.0 and p90([float(i) for i in range(1, 11)]) == 9.0


def test_bench_help(capsys):
    assert main(["bench", "--help"]) == 0
    assert "--baseline" in capsys.readouterr().out
