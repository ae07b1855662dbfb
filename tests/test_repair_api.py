"""dlm.repair (one plain forward, argmax everywhere), `dlm repair`, and the repair task's semantic corruption."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import dlm
from dlm.cli import main
from dlm.errors import DLMError
from dlm.eval.tasks.repair import Repair, corrupt_tokens, corrupt_tokens_semantic
from dlm.models.diffusion_lm import DiffusionLM
from dlm.repair import RepairOutput, input_embedding_weight, nearest_neighbours, special_ids

TEXT = "The package provides a library for parsing and emitting YAML documents."


@pytest.fixture(scope="module")
def a2d():  # shifted (AR-adapted) LLaMA with a tokenizer
    return dlm.load("tiny-a2d")


@pytest.fixture(scope="module")
def mdm():  # LLaDA, not shifted
    return dlm.load("tiny-mdm")


@pytest.fixture(params=["a2d", "mdm"])
def model(request):
    return request.getfixturevalue(request.param)


def text_ids(model, text=TEXT) -> torch.Tensor:
    return torch.tensor([[model.facts.bos_id] + model.tokenizer(text, add_special_tokens=False)["input_ids"]])


def argmax(model, ids, mask=None) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, attention_mask=mask).logits.argmax(-1)


# -- the function ----------------------------------------------------------------------------
def test_one_pass_is_the_argmax(model):
    ids = text_ids(model)
    out = dlm.repair(model, ids)
    want = argmax(model, ids)
    if model.facts.shifted:  # position 0 has no prediction of its own: kept
        want[:, 0] = ids[:, 0]
    assert torch.equal(out, want) and out.shape == ids.shape
    assert torch.equal(dlm.repair(model, ids[0]), out)  # a 1-D input is one row


def test_passes_feed_the_argmax_back(model):
    ids = text_ids(model)
    once = dlm.repair(model, ids)
    res = dlm.repair(model, ids, passes=3, return_dict=True)
    assert isinstance(res, RepairOutput) and res.passes == 3 and res.history.shape == (3, *ids.shape)
    assert torch.equal(res.history[0], once) and torch.equal(res.history[1], dlm.repair(model, once))
    assert torch.equal(dlm.repair(model, ids, passes=2), dlm.repair(model, once))
    assert torch.equal(res.ids, res.history[-1]) and torch.equal(res.input_ids, ids)
    assert res.changed.tolist() == [int((res.ids != ids).sum())]
    assert res.changed_positions(0) == (res.ids[0] != ids[0]).nonzero().flatten().tolist()


def test_keep_and_shifted_first_token(a2d, mdm):
    for model in (a2d, mdm):
        ids = text_ids(model)
        free = dlm.repair(model, ids)
        keep = torch.zeros_like(ids, dtype=torch.bool)
        keep[0, :5] = True
        kept = dlm.repair(model, ids, keep=keep, passes=2)
        assert torch.equal(kept[0, :5], ids[0, :5])
        assert torch.equal(kept[0, 5:], dlm.repair(model, torch.where(keep, ids, free))[0, 5:])  # pass 2 reads pass 1
    # a shifted model keeps each row's first token, even a wrong one; an unshifted one predicts it
    ids = text_ids(a2d)
    ids[0, 0] = 500
    assert int(dlm.repair(a2d, ids)[0, 0]) == 500
    assert int(dlm.repair(mdm, ids)[0, 0]) == int(argmax(mdm, ids)[0, 0])


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_rows_repair_as_alone(model, side):
    rows = [text_ids(model, t)[0] for t in (TEXT, "A small tool.", "Convert images between many formats quickly.")]
    width, pad = max(len(r) for r in rows), model.facts.pad_id
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[i, span], mask[i, span] = r, 1
    out = dlm.repair(model, ids, mask, passes=2)
    assert torch.equal(out[mask == 0], ids[mask == 0])  # padding never changes
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        assert torch.equal(out[i, span], dlm.repair(model, r[None], passes=2)[0])


def test_bad_input_is_one_clear_error(a2d):
    ids = text_ids(a2d)
    cases = [
        ({"input_ids": [[1, 9000]]}, "outside the vocabulary [0, 8192)"),
        ({"input_ids": [[1, -1]]}, "outside the vocabulary"),
        ({"input_ids": torch.zeros(1, 0, dtype=torch.long)}, "nothing to repair"),
        ({"input_ids": torch.zeros(0, 3, dtype=torch.long)}, "no rows"),
        ({"input_ids": torch.zeros(1, 2, 3, dtype=torch.long)}, "shape (batch, length)"),
        ({"input_ids": [[1.5, 2.0]]}, "integer token ids"),
        ({"input_ids": [[1, 2], [3]]}, "equal-length"),
        ({"input_ids": ids, "passes": 0}, "passes must be >= 1"),
        ({"input_ids": ids, "passes": 1001}, "at most 1000"),
        ({"input_ids": ids, "passes": 1.5}, "integer number of forward passes"),
        ({"input_ids": ids, "passes": True}, "integer number of forward passes"),
        ({"input_ids": ids, "attention_mask": torch.ones(1, 3)}, "attention_mask shape"),
        ({"input_ids": ids, "attention_mask": torch.full_like(ids, 2)}, "only 0 (padding) and 1"),
        ({"input_ids": [[1, 2]], "attention_mask": [[0, 0]]}, "all zeros"),
        ({"input_ids": [[1, 2, 3]], "attention_mask": [[1, 0, 1]]}, "padding between tokens"),
        ({"input_ids": ids, "keep": torch.zeros_like(ids)}, "keep must be a bool tensor"),
        ({"input_ids": ids, "keep": torch.zeros(1, 2, dtype=torch.bool)}, "keep shape"),
    ]
    for kwargs, message in cases:
        with pytest.raises(DLMError, match=re.escape(message)):
            dlm.repair(a2d, **kwargs)


# -- the command line --------------------------------------------------------------------------
def test_cli_repairs_text_and_ids(a2d, capsys, tmp_path):
    assert main(["repair", "--model", "tiny-a2d", "--text", TEXT, "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    ids = text_ids(a2d)
    want = dlm.repair(a2d, ids, keep=torch.arange(ids.shape[1])[None] == 0)[0].tolist()
    assert rec["input_ids"] == ids[0].tolist() and rec["ids"] == want and rec["bos_added"]
    assert [c["position"] for c in rec["changed"]] == [i for i, (a, b) in enumerate(zip(ids[0].tolist(), want)) if a != b]
    assert rec["n_changed"] == len(rec["changed"]) and rec["text"] == a2d.decode(want[1:])
    assert all(c["from"] == rec["input_ids"][c["position"]] and c["to"] == want[c["position"]] for c in rec["changed"])
    # plain output: the repaired text, the marked input, the count
    path = tmp_path / "t.txt"
    path.write_text(TEXT + "\n", encoding="utf-8")
    assert main(["repair", "--model", "tiny-a2d", "--file", str(path), "--passes", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("changed ") and lines[-1].endswith("tokens in 2 passes") and "[->" in lines[-2]
    assert main(["repair", "--model", "tiny-a2d", "--ids", "0,412,77,1093", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert not rec["bos_added"] and rec["ids"] == dlm.repair(a2d, [[0, 412, 77, 1093]])[0].tolist()


def test_cli_bad_input_is_one_line(tmp_path, capsys, tiny_llada_dir):
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 au lait\n")
    (tmp_path / "blank.txt").write_text("\n \n")
    cases = [
        (["--model", str(tmp_path / "missing"), "--text", "hi"], "does not exist"),
        (["--model", "tiny-a2d", "--text", "  "], "--text is empty"),
        (["--model", "tiny-a2d", "--file", str(tmp_path / "bad.txt")], "not valid UTF-8 (byte 0xe9"),
        (["--model", "tiny-a2d", "--file", str(tmp_path / "blank.txt")], "is empty"),
        (["--model", "tiny-a2d", "--file", str(tmp_path / "none.txt")], "does not exist"),
        (["--model", "tiny-a2d", "--ids", "1,99999"], "id 99999 is outside the vocabulary [0, 8192)"),
        (["--model", "tiny-a2d", "--ids", "1,x"], "--ids must be integers"),
        (["--model", "tiny-a2d", "--text", "hi", "--passes", "0"], "--passes must be >= 1"),
        (["--model", "tiny-a2d", "--text", "hi", "--passes", "-3"], "--passes must be >= 1"),
        (["--model", str(tiny_llada_dir), "--text", "hi"], "has no tokenizer; pass token ids with --ids"),
        (["--model", "tiny-a2d"], "one of the arguments --text --file --ids is required"),
    ]
    for argv, message in cases:
        assert main(["repair", *argv]) == 2, argv
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert captured.out == "" and len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err
    assert main(["repair", "--model", str(tiny_llada_dir), "--ids", "5 6 7 8"]) == 0  # no tokenizer: ids in, ids out
    out = capsys.readouterr().out.splitlines()
    assert len(out[0].split()) == 4 and out[-1].endswith("of 4 tokens in 1 pass")


# -- semantic corruption ----------------------------------------------------------------------
def test_input_embedding_weight_with_and_without_the_model_method(a2d, mdm):
    class Plain(DiffusionLM):
        input_embeddings = None  # a model object from before DiffusionLM.input_embeddings existed

    assert input_embedding_weight(a2d).data_ptr() == a2d.net.get_input_embeddings().weight.data_ptr()
    assert input_embedding_weight(mdm).data_ptr() == mdm.net.model.transformer.wte.weight.data_ptr()
    for m in (a2d, mdm):
        plain = Plain(m.net, m.facts, m.config, m.tokenizer)
        assert input_embedding_weight(plain).data_ptr() == input_embedding_weight(m).data_ptr()


def test_neighbours_are_the_nearest_by_cosine(a2d):
    special = special_ids(a2d)
    assert special == {0, 1, 2, 3, 4, 5, 6}  # facts' ids and the tokenizer's special tokens (<|user|>, ...)
    tokens = [7, 300, 1093, 4000]
    near = nearest_neighbours(a2d, tokens, 10, special)
    W = torch.nn.functional.normalize(input_embedding_weight(a2d).float(), dim=-1)
    for t in tokens:
        sims = W @ W[t]
        sims[t] = -2
        sims[sorted(special)] = -2
        assert len(near[t]) == 10 and t not in near[t] and not special & set(near[t])
        assert set(near[t]) == set(sims.topk(10).indices.tolist())
        assert sims[near[t]].tolist() == sorted(sims[near[t]].tolist(), reverse=True)
    with pytest.raises(DLMError, match="neighbours must be in"):
        nearest_neighbours(a2d, tokens, 8192, special)


def test_semantic_corruption_draws_neighbours_deterministically(a2d):
    gold = a2d.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    near = nearest_neighbours(a2d, gold, 5, special_ids(a2d))
    bad, pos = corrupt_tokens_semantic(gold, 0.5, 42, near)
    assert (bad, pos) == corrupt_tokens_semantic(gold, 0.5, 42, near)  # the seed decides
    assert pos == corrupt_tokens(gold, 0.5, 42, 7, 8192)[1]  # the same positions as random corruption
    assert len(pos) == len(gold) // 2 and all(bad[p] in near[gold[p]] for p in pos)
    assert all(bad[i] == gold[i] for i in range(len(gold)) if i not in pos)
    rng = np.random.RandomState(42)  # the reference's stream: positions, then randint(0, k) per position
    rng.choice(len(gold), len(pos), replace=False)
    assert [bad[p] for p in pos] == [near[gold[p]][rng.randint(0, 5)] for p in pos]
    assert corrupt_tokens_semantic(gold, 0.5, 43, near) != (bad, pos)


def test_semantic_task_scores_and_records_its_mode(a2d, tmp_path, capsys):
    data = tmp_path / "texts.txt"
    data.write_text(TEXT + "\nA small tool to convert images between formats.\n")
    out = tmp_path / "r"
    args = ["eval", "--model", "tiny-a2d", "--task", "repair", "--data", str(data), "--out", str(out), "-t", "rates=30"]
    assert main([*args, "-t", "corruption=semantic", "-t", "neighbours=3"]) == 0
    summary = json.loads(next(out.glob("*.summary.json")).read_text())
    settings = summary["settings"]
    assert settings["corruption"] == "semantic" and settings["task_options"]["corruption"] == "semantic"
    assert settings["task_options"]["neighbours"] == 3 and settings["neighbours_excluded_ids"] == [0, 1, 2, 3, 4, 5, 6]
    # scores: the corrupted text (behind a kept BOS) repaired in one pass
    rows = [json.loads(line) for line in next(out.glob("*.samples.jsonl")).read_text().splitlines()]
    task = Repair(data, rates="30", corruption="semantic", neighbours=3)
    examples = task.load_for(a2d)
    for ex, row in zip(examples, sorted(rows, key=lambda r: r["id"])):
        gold = ex.fields["tokens"]
        bad, pos = task.corrupt(a2d, gold, 30, ex.fields["seed_id"])
        assert all(bad[p] in nearest_neighbours(a2d, [gold[p]], 3, special_ids(a2d))[gold[p]] for p in pos)
        pred = dlm.repair(a2d, [[0] + bad])[0, 1:].tolist()
        assert row["fix_30"] == pytest.approx(100 * sum(pred[p] == gold[p] for p in pos) / len(pos))
    capsys.readouterr()
    # the other mode never resumes into these files; options that do not apply are refused
    assert main(args) == 2
    assert "corruption: 'semantic' there, 'random' now" in capsys.readouterr().err
    for bad_opts, message in ((["-t", "neighbours=3"], "neighbours applies to corruption=semantic only"),
                              (["-t", "corruption=semantic", "-t", "low_id=10"], "apply to corruption=random only"),
                              (["-t", "corruption=nearest"], "corruption must be one of random, semantic"),
                              (["-t", "corruption=semantic", "-t", "neighbours=0"], "neighbours must be >= 1")):
        assert main([*args, "--name", "x", *bad_opts]) == 2
        assert message in capsys.readouterr().err
