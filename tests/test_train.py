"""dlm train: the AR -> diffusion adaptation (annealing, shift, loss), the trainer, resume and DDP."""

import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dlm
from dlm.errors import DLMError
from dlm.train.build import ModelSize, new_model
from dlm.train.objectives import anneal_ratio, annealed_attention_bias, diffusion_loss
from dlm.train.trainer import Trainer, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "data" / "tokenizer"
TINY = ModelSize(d_model=32, n_layers=2, n_heads=2, mlp_hidden=64, max_positions=256)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER), local_files_only=True)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """400 train / 80 validation pairs taken from the shipped validation split."""
    from dlm.data.debian import load_split

    rows = load_split(ROOT / "data" / "debian", "validation")
    out = tmp_path_factory.mktemp("data")
    for name, part in (("train", rows[:400]), ("validation", rows[400:480])):
        with lzma.open(out / f"{name}.jsonl.xz", "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    return out


def test_anneal_ratio_goes_from_causal_to_full():
    assert [anneal_ratio(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert anneal_ratio(0, 0) == 1.0  # no annealing: full attention from the start


def test_annealed_bias_is_causal_or_bernoulli():
    L = 64
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    open_ = lambda b: b[0, 0] == 0  # noqa: E731
    assert torch.equal(open_(annealed_attention_bias(L, 0.0, torch.float32)), causal)
    assert bool(open_(annealed_attention_bias(L, 1.0, torch.float32)).all())
    bias = annealed_attention_bias(L, 0.3, torch.float32, generator=torch.Generator().manual_seed(0))
    allowed = open_(bias)
    assert bool(allowed[causal].all())  # the causal part is always open
    share = allowed[~causal].float().mean().item()
    assert 0.25 < share < 0.35
    assert bias.shape == (1, 1, L, L) and float(bias.min()) == torch.finfo(torch.float32).min


def test_causal_bias_makes_the_adapted_model_its_ar_model(tokenizer):
    """At annealing ratio 0 the shifted diffusion model is exactly the causal LM it started from."""
    model = new_model("llama", TINY, tokenizer, seed=1, objective="a2d")
    x = torch.randint(7, 8192, (2, 12))
    aligned = model(x, attention_bias=annealed_attention_bias(12, 0.0, torch.float32)).logits
    causal = model.net(input_ids=x).logits
    torch.testing.assert_close(aligned[:, 1:], causal[:, :-1], rtol=1e-5, atol=1e-5)


def test_a2d_loss_is_diffugpt_inner_forward(tokenizer):
    """Same random draws, computed the DiffuGPT way on the raw causal LM: shift, 1/t, / #masked."""
    model = new_model("llama", TINY, tokenizer, seed=2, objective="a2d")
    x = torch.randint(7, 8192, (3, 16))
    step, anneal = 2, 10
    got = diffusion_loss(model, {"input_ids": x}, mask_id=3, shifted=True, objective="a2d", step=step,
                         anneal_steps=anneal, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    ratio = (step + 1) / anneal
    allowed = torch.ones(16, 16, dtype=torch.bool).tril() | (torch.rand(16, 16, generator=g) < ratio)
    t = (1 - 1e-3) * torch.rand(3, generator=g) + 1e-3
    masked = torch.rand(3, 16, generator=g) < t[:, None]
    masked[:, 0] = False  # dlm keeps position 0 (no prediction of its own) clean
    x_t = torch.where(masked, 3, x)
    mask4d = torch.zeros(3, 1, 16, 16).masked_fill(~allowed, torch.finfo(torch.float32).min)
    logits = model.net(input_ids=x_t, attention_mask=mask4d).logits
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, 8192), x[:, 1:].reshape(-1), reduction="none").view(3, 15)
    loss_mask = masked[:, 1:]
    want = ((ce / t[:, None]) * loss_mask).sum() / loss_mask.sum()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _cfg(tmp_path, data_dir, name, **kw):
    base = dict(out=str(tmp_path / name), data=str(data_dir), seq_len=64, batch_size=4, max_steps=4, eval_every=2,
                eval_batches=2, save_every=2, warmup_steps=2, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def test_family_recipe_end_to_end(tmp_path, data_dir):
    """causal LM -> a2d adaptation -> diffusion SFT, and causal SFT: each loads and generates."""
    tok = str(TOKENIZER)
    ar = _cfg(tmp_path, data_dir, "ar", objective="causal", arch="llama", size=TINY, tokenizer=tok)
    assert Trainer(ar).train()["finished"]
    a2d = _cfg(tmp_path, data_dir, "a2d", objective="a2d", init=ar.out, anneal_steps=3)
    log = Trainer(a2d).train()["log"]
    assert [e["attention_ratio"] for e in log] == [1 / 3, 2 / 3, 1.0, 1.0]
    sft = _cfg(tmp_path, data_dir, "sft", objective="mdm", task="sft", init=a2d.out, seq_len=256, answer_length=32)
    Trainer(sft).train()
    ar_sft = _cfg(tmp_path, data_dir, "ar_sft", objective="causal", task="sft", init=ar.out, seq_len=256)
    Trainer(ar_sft).train()

    m_ar, m_a2d, m_sft = dlm.load(ar.out), dlm.load(a2d.out), dlm.load(sft.out)
    assert m_ar.facts.causal and not m_a2d.facts.causal and m_a2d.facts.shifted and m_a2d.facts.mask_id == 3
    assert m_sft.config["dlm_generation"] == {"gen_length": 32}
    card = (Path(a2d.out) / "README.md").read_text()
    assert "annealing causal -> full over 3 steps" in card and "| 4 |" in card
    prompt = torch.tensor([m_sft.encode_prompt("A tool.")])
    out = dlm.generate(m_sft, prompt, return_dict=True)
    assert out.sampler == "llada" and out.generated.shape == (1, 32)
    out = dlm.generate(dlm.load(ar_sft.out), prompt, return_dict=True, gen_length=5)
    assert out.sampler == "ar" and out.nfe <= 5
    with pytest.raises(DLMError, match="causal"):
        dlm.generate(m_ar, prompt, sampler="llada")


def test_resume_reproduces_an_uninterrupted_run(tmp_path, data_dir):
    size = dict(objective="mdm", arch="llada", size=TINY, tokenizer=str(TOKENIZER), max_steps=5, save_every=10)
    Trainer(_cfg(tmp_path, data_dir, "straight", **size)).train()
    first = Trainer(_cfg(tmp_path, data_dir, "resumed", max_minutes=1e-9, **size)).train()
    assert not first["finished"] and first["step"] == 1
    assert (tmp_path / "resumed" / "checkpoint" / "dlm_state.json").exists()
    second = Trainer(_cfg(tmp_path, data_dir, "resumed", **size)).train()
    assert second["finished"] and second["step"] == 5
    assert not (tmp_path / "resumed" / "checkpoint").exists()
    a, b = dlm.load(tmp_path / "straight"), dlm.load(tmp_path / "resumed")
    for (k, va), (_, vb) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        torch.testing.assert_close(va, vb, msg=k)


@pytest.mark.parametrize("arch", ["llada", "llama"])
def test_gradient_checkpointing_gives_the_same_step(tmp_path, data_dir, arch):
    kw = dict(objective="mdm", arch=arch, size=TINY, tokenizer=str(TOKENIZER), max_steps=2, eval_every=2)
    Trainer(_cfg(tmp_path, data_dir, "plain", **kw)).train()
    Trainer(_cfg(tmp_path, data_dir, "ckpt", gradient_checkpointing=True, **kw)).train()
    a, b = dlm.load(tmp_path / "plain"), dlm.load(tmp_path / "ckpt")
    for (k, va), (_, vb) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        torch.testing.assert_close(va, vb, msg=k, rtol=1e-4, atol=1e-5)


def test_resume_with_other_settings_is_refused(tmp_path, data_dir):
    size = dict(objective="mdm", arch="llada", size=TINY, tokenizer=str(TOKENIZER), max_steps=5)
    Trainer(_cfg(tmp_path, data_dir, "r", max_minutes=1e-9, **size)).train()
    with pytest.raises(DLMError, match="different settings.*lr"):
        Trainer(_cfg(tmp_path, data_dir, "r", lr=5e-4, **size)).train()


@pytest.mark.parametrize("kw, message", [
    (dict(objective="a2d"), "pass --init"),
    (dict(objective="a2d", init="x", task="sft"), "fine-tune the adapted model"),
    (dict(objective="nope"), "--objective"),
    (dict(batch_size=0), "--batch_size"),
    (dict(lr=float("nan")), "--lr"),
])
def test_invalid_settings_are_rejected(tmp_path, kw, message):
    cfg = TrainConfig(out=str(tmp_path / "x"), tokenizer=str(TOKENIZER), **kw)
    with pytest.raises(DLMError, match=message.replace("_", "[-_]")):
        cfg.validate()


def test_cli_train_error_is_one_line(tmp_path):
    from dlm.cli import main

    assert main(["train", "--out", str(tmp_path / "o"), "--objective", "a2d"]) == 2


def test_accelerate_launch_two_cpu_processes(tmp_path, data_dir):
    """DDP over gloo: two processes, each a half of the global batch."""
    accelerate = Path(sys.executable).with_name("accelerate")
    out = tmp_path / "ddp"
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "dlm.cli", "train", "--out", str(out),
           "--objective", "mdm", "--arch", "llada", "--d-model", "32", "--n-layers", "1", "--n-heads", "2",
           "--mlp-hidden", "64", "--tokenizer", str(TOKENIZER), "--data", str(data_dir), "--seq-len", "32",
           "--batch-size", "2", "--max-steps", "3", "--eval-every", "3", "--eval-batches", "1", "--no-progress",
           "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": "29517"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1 and lines[0]["finished"]  # only the main process reports
    log = json.loads((out / "training_log.json").read_text())
    assert log["processes"] == 2 and log["tokens"] == 3 * 2 * 2 * 32


@pytest.mark.parametrize("argv, message", [
    (["--tokenizer", "/does/not/exist"], "tokenizer directory /does/not/exist does not exist"),
    (["--data", "/does/not/exist"], "no train split"),
    (["--init", "/does/not/exist"], "does not exist"),
    (["--max-steps", "0"], "--max-steps must be >= 1"),
])
def test_cli_train_bad_input(capsys, tmp_path, argv, message):
    from dlm.cli import main

    code = main(["train", "--out", str(tmp_path / "o"), "--no-progress", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
