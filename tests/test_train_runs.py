"""dlm train runs: resume (exact), checkpoint swaps cut short, reruns of finished runs, --continue-finished,
output folders that hold something else, and Ctrl-C / SIGTERM."""

import json
import signal

import pytest
import torch

import dlm
from conftest import TINY, TOKENIZER, debian_subset, interrupt_training_at, tiny_train_config, train_config
from dlm.errors import DLMError
from dlm.train.build import ModelSize
from dlm.train.trainer import Trainer, TrainConfig

pytestmark = pytest.mark.usefixtures("tokenised_cache")  # the shared test cache (conftest)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """400 train / 80 validation pairs taken from the shipped validation split."""
    return debian_subset(tmp_path_factory.mktemp("data"), 400, 80)


def test_resume_reproduces_an_uninterrupted_run(tmp_path, data_dir):
    size = dict(objective="mdm", arch="llada", size=TINY, tokenizer=str(TOKENIZER), max_steps=5, save_every=10)
    Trainer(train_config(tmp_path, data_dir, "straight", **size)).train()
    first = Trainer(train_config(tmp_path, data_dir, "resumed", max_minutes=1e-9, **size)).train()
    assert not first["finished"] and first["step"] == 1
    assert (tmp_path / "resumed" / "checkpoint" / "dlm_state.json").exists()
    second = Trainer(train_config(tmp_path, data_dir, "resumed", **size)).train()
    assert second["finished"] and second["step"] == 5
    assert not (tmp_path / "resumed" / "checkpoint").exists()
    a, b = dlm.load(tmp_path / "straight"), dlm.load(tmp_path / "resumed")
    for (k, va), (_, vb) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        torch.testing.assert_close(va, vb, msg=k)


@pytest.mark.parametrize("cut", ["after_first_rename", "before_any_rename"])
def test_a_checkpoint_swap_cut_short_is_completed_on_resume(tmp_path, data_dir, cut):
    """A kill inside a checkpoint save leaves a complete checkpoint under another name: it is found."""
    from dlm.train.runs import recover_checkpoint

    size = dict(objective="mdm", arch="llada", size=TINY, tokenizer=str(TOKENIZER), max_steps=3, save_every=10)
    Trainer(train_config(tmp_path, data_dir, "straight", **size)).train()
    out = tmp_path / "cut"
    assert not Trainer(train_config(tmp_path, data_dir, "cut", max_minutes=1e-9, **size)).train()["finished"]
    if cut == "after_first_rename":  # checkpoint -> checkpoint.old done, checkpoint.tmp -> checkpoint not yet
        (out / "checkpoint").rename(out / "checkpoint.old")
    else:  # the new checkpoint.tmp is complete, the old checkpoint still in place (here: a partial one)
        (out / "checkpoint").rename(out / "checkpoint.tmp")
        (out / "checkpoint").mkdir()
        (out / "checkpoint" / "partial").write_text("x")
    resumed = Trainer(train_config(tmp_path, data_dir, "cut", **size)).train()
    assert resumed["finished"] and [e["step"] for e in resumed["log"]] == [1, 2, 3]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == []
    a, b = dlm.load(tmp_path / "straight"), dlm.load(out)
    for (k, va), (_, vb) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        torch.testing.assert_close(va, vb, msg=k)
    (out / "checkpoint.tmp").mkdir()  # a save cut short before its state file: dropped
    recover_checkpoint(out)
    assert not (out / "checkpoint.tmp").exists() and not (out / "checkpoint").exists()


def test_resume_with_other_settings_is_refused(tmp_path, data_dir):
    size = dict(objective="mdm", arch="llada", size=TINY, tokenizer=str(TOKENIZER), max_steps=5)
    Trainer(train_config(tmp_path, data_dir, "r", max_minutes=1e-9, **size)).train()
    with pytest.raises(DLMError, match="different settings.*lr"):
        Trainer(train_config(tmp_path, data_dir, "r", lr=5e-4, **size)).train()


# -- output folders: finished runs, continuation, foreign folders ----------------------------------
def test_rerun_of_a_finished_run_does_nothing_and_other_settings_are_refused(tmp_path, data_dir, capsys):
    assert Trainer(tiny_train_config(tmp_path, data_dir)).train()["finished"]
    weights = tmp_path / "run" / "model.safetensors"
    before = (weights.read_bytes(), weights.stat().st_mtime_ns)
    again = Trainer(tiny_train_config(tmp_path, data_dir, max_minutes=5)).train()  # a budget is not a setting
    assert again["already_finished"] and again["step"] == 4
    assert "already holds this finished run (4 steps); nothing to do" in capsys.readouterr().err
    with pytest.raises(DLMError, match=r"other settings \(--lr 0.001 -> 0.0005\).*--continue-finished"):
        Trainer(tiny_train_config(tmp_path, data_dir, lr=5e-4))
    with pytest.raises(DLMError, match=r"--max-steps 4 -> 20"):
        Trainer(tiny_train_config(tmp_path, data_dir, max_steps=20))
    assert (weights.read_bytes(), weights.stat().st_mtime_ns) == before


def test_continue_finished_trains_on_from_the_finished_step(tmp_path, data_dir, capsys):
    Trainer(tiny_train_config(tmp_path, data_dir)).train()
    old = dlm.load(tmp_path / "run").net.state_dict()
    with pytest.raises(DLMError, match=r"settings that define a model cannot change \(--d-model 32 -> 64\)"):
        Trainer(tiny_train_config(tmp_path, data_dir, max_steps=6, continue_finished=True,
                      size=ModelSize(d_model=64, n_layers=2, n_heads=2, mlp_hidden=64, max_positions=256)))
    with pytest.raises(DLMError, match="finished at step 4; --continue-finished trains on to --max-steps"):
        Trainer(tiny_train_config(tmp_path, data_dir, max_steps=3, lr=5e-4, continue_finished=True))
    with pytest.raises(DLMError, match=r"--warmup-steps 2 must be below the 2 steps this run trains"):
        Trainer(tiny_train_config(tmp_path, data_dir, max_steps=6, lr=5e-4, continue_finished=True))
    result = Trainer(tiny_train_config(tmp_path, data_dir, max_steps=7, lr=5e-4, continue_finished=True)).train()
    assert result["finished"] and [e["step"] for e in result["log"]] == [1, 2, 3, 4, 5, 6, 7]
    assert "from step 4 to 7: its weights, a new AdamW state" in capsys.readouterr().err
    log = json.loads((tmp_path / "run" / "training_log.json").read_text())
    assert log["previous"]["step"] == 4 and log["previous"]["config"]["lr"] == 1e-3 and log["config"]["lr"] == 5e-4
    assert log["log"][4]["lr"] == 5e-4 * 0.5  # a new warm-up (2 steps) from step 4
    model = dlm.load(tmp_path / "run")
    assert model.config["dlm_training"]["steps"] == 7 and model.config["dlm_training"]["continued_from_step"] == 4
    assert any(not torch.equal(v, model.net.state_dict()[k]) for k, v in old.items())
    # the same continuation again is finished too
    assert Trainer(tiny_train_config(tmp_path, data_dir, max_steps=7, lr=5e-4,
                                     continue_finished=True)).train()["already_finished"]


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("x"), "is a file"),
    (lambda p: (p.mkdir(), (p / "notes.txt").write_text("keep me")), r"is not empty \(notes.txt\)"),
    (lambda p: p.parent.joinpath("blocker").write_text("x"), "blocker is a file, not a folder"),
])
def test_out_that_is_not_a_run_is_refused_before_any_work(tmp_path, make, message, tokenised_cache):
    out = tmp_path / "out"
    make(out)
    if "blocker" in message:
        out = tmp_path / "blocker" / "out"  # a folder under a file cannot be created
    cfg = TrainConfig(out=str(out), data="/does/not/exist", tokenizer=str(TOKENIZER))  # the data is never read
    with pytest.raises(DLMError, match=message):
        Trainer(cfg)
    if out.is_dir():
        assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("how", ["signal", "sigterm", "exception"])
def test_ctrl_c_saves_a_checkpoint_and_the_resumed_run_is_exact(tmp_path, data_dir, monkeypatch, capsys, how):
    """SIGINT: the step finishes, then a checkpoint; a KeyboardInterrupt mid-step: the last finished step."""
    kw = dict(objective="mdm", arch="llada", max_steps=5, save_every=10)
    straight = Trainer(tiny_train_config(tmp_path, data_dir, "straight", **kw)).train()
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with monkeypatch.context() as m:
        interrupt_training_at(m, 2, how)
        with pytest.raises(KeyboardInterrupt):
            Trainer(tiny_train_config(tmp_path, data_dir, "cut", **kw)).train()
    saved = 2 if how == "exception" else 3
    state = json.loads((tmp_path / "cut" / "checkpoint" / "dlm_state.json").read_text())
    assert state["step"] == saved and len(state["log"]) == saved
    assert f"interrupted at step {saved}/5; checkpoint in" in capsys.readouterr().err
    assert {sig: signal.getsignal(sig) for sig in before} == before  # the handlers are restored
    resumed = Trainer(tiny_train_config(tmp_path, data_dir, "cut", **kw)).train()
    assert resumed["finished"] and [e["step"] for e in resumed["log"]] == [1, 2, 3, 4, 5]
    assert [e["tokens"] for e in resumed["log"]] == [e["tokens"] for e in straight["log"]]
    a, b = dlm.load(tmp_path / "straight"), dlm.load(tmp_path / "cut")
    for (k, va), (_, vb) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        torch.testing.assert_close(va, vb, msg=k)
