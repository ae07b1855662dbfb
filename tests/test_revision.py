"""The revision family's shared parts and dlm's own rules: the d3im sampler (LLaDA + a corrector),
revision events and their scoring, the generated arithmetic task, and SCOPE post-training."""

import json
import re

import pytest
import torch

import dlm
from conftest import make_tiny_llada, train_config
from dlm.data.arith import arith_split, sft_record
from dlm.diffusion.losses import masked_diffusion_loss
from dlm.eval.tasks import get_task
from dlm.sampling.d3im import revision_probability
from dlm.sampling.revision import Revision, revision_events, score_revisions
from dlm.train.scope import ScopeObjective, self_fill

pytestmark = pytest.mark.usefixtures("tokenised_cache")


@pytest.fixture(scope="module")
def sharp():
    return make_tiny_llada(seed=5, std=0.6)  # confident enough that argmax at visible positions moves


def _prompts():
    return torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])


# -- d3im ---------------------------------------------------------------------------------------
def test_d3im_with_eta_zero_is_llada(tiny_llada):
    for opts in (dict(gen_length=16, steps=8), dict(gen_length=16, steps=8, block_length=8, temperature=1.0)):
        a = dlm.generate(tiny_llada, _prompts(), sampler="llada", seed=[1, 2], **opts)
        b = dlm.generate(tiny_llada, _prompts(), sampler="d3im", eta=0.0, seed=[1, 2], **opts)
        assert torch.equal(a, b)


def test_d3im_revises_visible_tokens_in_place_and_counts_them(sharp):
    out = dlm.generate(sharp, _prompts(), sampler="d3im", gen_length=24, steps=12, block_length=8, seed=[3, 4],
                       return_dict=True, output_history=True)
    assert out.nfe == 12 and out.history.shape[0] == 13
    events = revision_events(out.history, out.prompt_length, sharp.facts.mask_id)
    assert sum(out.stats["revised"]) == len(events) > 0  # no remask: every change is visible -> visible
    assert out.stats["remasked"] == [0, 0]
    assert torch.equal(out.history[:, :, :4], out.history[:1, :, :4].expand(13, -1, -1))  # the prompt never moves
    assert bool((out.sequences != sharp.facts.mask_id).all())
    last, before = out.history[-1], out.history[-2]
    visible = before != sharp.facts.mask_id
    assert torch.equal(last[visible], before[visible])  # sigma = 0 at the last step: nothing revised


def test_d3im_padded_rows_equal_their_runs_alone(sharp):
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    opts = dict(gen_length=16, steps=8, temperature=0.7)
    batch = dlm.generate(sharp, ids, mask, sampler="d3im", seed=[11, 12], **opts)
    alone = dlm.generate(sharp, ids[:1, 2:], sampler="d3im", seed=[11], **opts)
    assert torch.equal(batch[0, 2:], alone[0])
    assert torch.equal(batch[1], dlm.generate(sharp, ids[1:], sampler="d3im", seed=[12], **opts)[0])


def test_revision_probability_follows_the_schedule():
    G = 8
    sigma = revision_probability(torch.tensor([0, 2, 4, 6, 7]), torch.tensor([2, 4, 6, 7, 8]), G, None)
    # (1 - alpha_s) / alpha_t capped at 1: nothing visible -> 0; then 1, 1, 1/6 / (6/8) ... 0 at the end
    assert sigma.tolist() == pytest.approx([0.0, 1.0, 0.5, 1 / 6, 0.0])
    assert revision_probability(torch.tensor([2]), torch.tensor([4]), G, 0.3).tolist() == pytest.approx([0.3])


@pytest.mark.parametrize("options,match", [(dict(eta=1.5), "eta"), (dict(eta=-0.1), "eta"),
                                           (dict(remasking="random"), "remasking"), (dict(steps=0), "steps")])
def test_d3im_refuses_invalid_options(tiny_llada, options, match):
    with pytest.raises(dlm.DLMError, match=match):
        dlm.generate(tiny_llada, _prompts(), sampler="d3im", gen_length=16, **{"steps": 8, **options})


# -- revision events ------------------------------------------------------------------------------
def test_revision_events_see_direct_and_remasked_changes_but_not_refills():
    M = 99
    steps = [[1, M, M, M], [1, 5, M, M], [1, 6, 7, M], [1, M, 7, 8], [1, 6, 3, 8], [1, 6, 3, M]]
    history = torch.tensor(steps)[:, None, :]  # (S + 1, 1, L), prompt length 1
    events = revision_events(history, 1, M)
    # 5 -> 6 directly at step 2; 6 -> mask -> 6 is no revision; 7 -> 3 at step 4; 8 -> mask at the end is none
    assert events == [Revision(0, 0, 2, 5, 6), Revision(0, 1, 4, 7, 3)]
    assert score_revisions(events, [[6, 7, 8]]) == {"revisions": 2, "right": 1, "wrong": 1, "neutral": 0}


# -- arithmetic task ------------------------------------------------------------------------------
def test_arith_splits_are_deterministic_disjoint_and_correct():
    test = arith_split("test")
    assert test == arith_split("test") and len(test) == 500
    assert not {r["question"] for r in test} & {r["question"] for r in arith_split("train", 3000)}
    for r in test + arith_split("validation"):
        steps, answer = r["answer"].split("\n#### ")
        for a, op, b, c in re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)\.", steps):
            assert eval(f"{a} {op} {b}") == int(c)  # noqa: S307 - our own generated digits
        assert steps.rstrip(".").split(" = ")[-1] == answer
    assert sft_record(test[0])["prompt"].endswith(test[0]["question"])


def test_arith_task_scores_its_references_and_takes_no_data():
    task = get_task("arith")
    ex = task.load()[0]
    assert task.score(ex.fields["solution"], ex)["exact_match_strict"] == 100.0
    assert task.score("#### 100000", ex)["exact_match_strict"] == 0.0
    with pytest.raises(dlm.DLMError, match="no --data"):
        get_task("arith", data="somewhere")


def test_eval_records_revisions_of_a_revision_sampler(tmp_path):
    from dlm.cli import main

    assert main(["eval", "--task", "arith", "--model", "tiny-a2d-instruct", "--limit", "2", "--nfe", "8",
                 "--sampler", "d3im", "-o", "temperature=1.0", "--out", str(tmp_path), "--no-progress"]) == 0
    (summary,) = tmp_path.glob("*.summary.json")
    result = json.loads(summary.read_text())["results"][0]
    for key in ("mean_revisions", "mean_revisions_right", "mean_revisions_wrong", "share_revised"):
        assert key in result


# -- SCOPE ----------------------------------------------------------------------------------------
def test_self_fill_fills_the_most_confident_share_of_the_masks():
    logits = torch.tensor([[[0.0, 5.0], [3.0, 0.0], [0.0, 1.0], [9.0, 0.0]]])  # (1, 4, 2)
    masked = torch.tensor([[True, True, True, False]])
    draws, fill = self_fill(logits, masked, torch.tensor([0.7]))  # floor(0.7 * 3) = 2 of the 3 masks
    assert draws.tolist() == [[1, 0, 1, 0]]
    assert fill.tolist() == [[True, True, False, False]]


def test_scope_loss_without_self_filling_is_the_masked_diffusion_loss(tiny_llada):
    ids = torch.randint(0, 60, (3, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "prompt_lengths": torch.tensor([3, 4, 5])}
    scope = ScopeObjective(tiny_llada.facts.mask_id)
    a = scope.loss(tiny_llada, batch, False, torch.Generator().manual_seed(7), share=torch.zeros(3))
    b = masked_diffusion_loss(tiny_llada, ids, tiny_llada.facts.mask_id, prompt_lengths=batch["prompt_lengths"],
                              attention_mask=batch["attention_mask"], generator=torch.Generator().manual_seed(7),
                              shifted=False).loss
    assert torch.allclose(a, b)
    full = scope.loss(tiny_llada, batch, False, torch.Generator().manual_seed(7), share=torch.ones(3))
    assert not torch.allclose(full, b)  # the self-filled state is another input
    assert scope.log()["fill_error"] > 0


def test_dlm_train_scope_with_lora_on_arith(tmp_path):
    from dlm.train.trainer import Trainer

    cfg = train_config(tmp_path, None, "scope", objective="scope", task="arith", init="tiny-a2d-instruct",
                       lora=4, seq_len=160, answer_length=64, data=None)
    result = Trainer(cfg).train()
    assert result["finished"]
    log = json.loads((tmp_path / "scope" / "training_log.json").read_text())["log"]
    assert all(e["fill_error"] is not None for e in log) and "val_loss" in log[-1]
    assert (tmp_path / "scope" / "adapter_model.safetensors").is_file()
    model = dlm.load(tmp_path / "scope")
    assert model.config["dlm_training"]["objective"] == "scope"
    assert "arithmetic" in (tmp_path / "scope" / "README.md").read_text()


@pytest.mark.parametrize("args,match", [
    (["--objective", "scope", "--task", "sft"], "pass --init"),
    (["--objective", "scope", "--task", "sft", "--init", "tiny-ar"], "causal LM"),
    (["--objective", "mdm", "--task", "arith", "--init", "tiny-a2d-instruct", "--data", "x"], "no --data"),
    (["--objective", "mdm", "--task", "arith", "--init", "tiny-a2d-instruct", "--instruction-dropout", "0.2"],
     "instruction-dropout"),
])
def test_train_refuses_scope_and_arith_misuse(tmp_path, capsys, args, match):
    from dlm.cli import main

    assert main(["train", "--out", str(tmp_path / "o"), "--max-steps", "2", "--no-progress", *args]) == 2
    assert re.search(match, capsys.readouterr().err)


# -- the table script (benchmarks/revision_table.py) -----------------------------------------------
def test_revision_table_report_and_plot(tmp_path):
    import revision_table

    def summary(status, results):
        return {"status": status, "results": results}

    (tmp_path / "arith").mkdir()
    rows = [{"budget": b, "mean_nfe": b, "exact_match_strict": 10.0 * i, "mean_revisions": 1.0,
             "mean_revisions_right": 0.5, "mean_revisions_wrong": 0.25, "share_revised": 0.1}
            for i, b in enumerate((32, 64))]
    (tmp_path / "arith" / "scope__remdm.summary.json").write_text(json.dumps(summary("running", rows)))
    (tmp_path / "arith" / "sft__edit.summary.json").write_text(json.dumps(summary("complete", [
        {"budget": None, "mean_nfe": 27.5, "exact_match_strict": 2.0}])))
    (tmp_path / "arith" / "control__llada.summary.json").write_text(json.dumps(summary("running", [])))  # nothing done
    assert revision_table.main([str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "| remdm * | after SCOPE | 16 | 32.0 | 0.0 | 10.0 | 1.00 | 0.50 | 0.25 |" in report  # 2 passes a step
    assert "| edit | before SCOPE | - | 27.5 | 2.0 | - | - | - | - |" in report
    assert "same-compute control" not in report  # a run that finished no budget has no row
    assert (tmp_path / "revision.png").stat().st_size > 0
    assert revision_table.main([str(tmp_path / "nothing")]) == 1
