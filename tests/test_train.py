"""dlm train: the AR -> diffusion adaptation (annealing, shift, loss), the trainer, DDP, the tokenised-data
cache and mixed precision (resume and output folders: test_train_runs.py; the command: test_train_cli.py)."""

import json
import math
import lzma
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dlm
from conftest import ROOT, TINY, TOKENIZER, debian_subset, tiny_train_config, train_config
from dlm.errors import DLMError
from dlm.models.default import CHAT_TEMPLATE, pretrained_dir
from dlm.train.build import ModelSize, new_model
from dlm.train.objectives import anneal_ratio, annealed_attention_bias, diffusion_loss
from dlm.train.trainer import Trainer, TrainConfig


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER), local_files_only=True)


pytestmark = pytest.mark.usefixtures("tokenised_cache")  # the shared test cache (conftest)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """400 train / 80 validation pairs taken from the shipped validation split."""
    return debian_subset(tmp_path_factory.mktemp("data"), 400, 80)


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


def test_family_recipe_end_to_end(tmp_path, data_dir):
    """causal LM -> a2d adaptation -> diffusion SFT, and causal SFT: each loads and generates."""
    tok = str(TOKENIZER)
    ar = train_config(tmp_path, data_dir, "ar", objective="causal", arch="llama", size=TINY, tokenizer=tok)
    assert Trainer(ar).train()["finished"]
    a2d = train_config(tmp_path, data_dir, "a2d", objective="a2d", init=ar.out, anneal_steps=3)
    log = Trainer(a2d).train()["log"]
    assert [e["attention_ratio"] for e in log] == [1 / 3, 2 / 3, 1.0, 1.0]
    sft = train_config(tmp_path, data_dir, "sft", objective="mdm", task="sft", init=a2d.out, seq_len=256,
                       answer_length=32)
    Trainer(sft).train()
    ar_sft = train_config(tmp_path, data_dir, "ar_sft", objective="causal", task="sft", init=ar.out, seq_len=256)
    Trainer(ar_sft).train()

    m_ar, m_a2d, m_sft = dlm.load(ar.out), dlm.load(a2d.out), dlm.load(sft.out)
    # base models carry no chat template (they never saw one); SFT from a base --init adds dlm's
    assert m_ar.tokenizer.chat_template is None and m_a2d.tokenizer.chat_template is None
    assert not (Path(ar.out) / "chat_template.jinja").exists()
    assert m_sft.tokenizer.chat_template == CHAT_TEMPLATE == dlm.load(ar_sft.out).tokenizer.chat_template
    assert m_ar.config["dlm_training"]["seq_len"] == 64 and m_sft.config["dlm_training"]["seq_len"] == 256
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


@pytest.mark.parametrize("arch", ["llada", "llama"])
def test_gradient_checkpointing_gives_the_same_step(tmp_path, data_dir, arch):
    kw = dict(objective="mdm", arch=arch, size=TINY, tokenizer=str(TOKENIZER), max_steps=2, eval_every=2,
              warmup_steps=1)
    Trainer(train_config(tmp_path, data_dir, "plain", **kw)).train()
    Trainer(train_config(tmp_path, data_dir, "ckpt", gradient_checkpointing=True, **kw)).train()
    a, b = dlm.load(tmp_path / "plain"), dlm.load(tmp_path / "ckpt")
    for (k, va), (_, vb) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        torch.testing.assert_close(va, vb, msg=k, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kw, message", [
    (dict(objective="a2d"), "pass --init"),
    (dict(objective="causal", arch="llada"), "pass --arch llama"),
    (dict(objective="a2d", init="x", task="sft"), "fine-tune the adapted model"),
    (dict(objective="nope"), "--objective"),
    (dict(batch_size=0), "--batch_size"),
    (dict(lr=float("nan")), "--lr"),
    (dict(max_steps=10, warmup_steps=10), "--warmup-steps 10 must be below --max-steps 10"),
    (dict(warmup_steps=-1), "--warmup-steps must be >= 0"),
    (dict(init="x"), "--tokenizer is for a new model"),
    (dict(task="sft", seq_len=32, answer_length=32), "--answer-length 32 leaves no room"),
])
def test_invalid_settings_are_rejected(tmp_path, kw, message):
    cfg = TrainConfig(out=str(tmp_path / "x"), tokenizer=str(TOKENIZER), **kw)
    with pytest.raises(DLMError, match=message.replace("_", "[-_]")):
        cfg.validate()


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
    assert proc.stderr.count("dlm train: step 3/3 loss") == 1  # without a progress bar: a log line, once
    log = json.loads((out / "training_log.json").read_text())
    assert log["processes"] == 2 and log["tokens"] == 3 * 2 * 2 * 32


def test_default_paths_do_not_depend_on_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(out="o").resolved()
    assert (cfg.data_dir(), cfg.tokenizer_dir()) == (ROOT / "data" / "debian", TOKENIZER)
    # recorded as None (the shipped data), not as this checkout's absolute path: a moved checkout resumes
    assert (cfg.data, cfg.tokenizer) == (None, None)
    typed = TrainConfig(out="o", data="mine", tokenizer="~/tok").resolved()
    assert typed.data == str(tmp_path / "mine") and typed.tokenizer == str(Path.home() / "tok")
    assert TrainConfig(out="o", init="tiny-ar").resolved().init == "tiny-ar"  # a shipped name stays a name


def test_memory_is_checked_before_tokenising(tmp_path, data_dir, tokenised_cache):
    huge = ModelSize(d_model=32, n_layers=2, n_heads=2, mlp_hidden=64, max_positions=8192)
    cached = set(tokenised_cache.glob("*")) if tokenised_cache.exists() else set()
    with pytest.raises(DLMError, match=r"training on 4096 x 8192 tokens per micro-step needs about .* TiB"):
        Trainer(tiny_train_config(tmp_path, data_dir, size=huge, seq_len=8192, batch_size=4096))
    assert (set(tokenised_cache.glob("*")) if tokenised_cache.exists() else set()) == cached


def test_shipped_base_models_have_no_chat_template():
    from transformers import AutoTokenizer

    for name in ("tiny-ar", "tiny-a2d", "tiny-mdm", "tiny-ar-instruct", "tiny-a2d-instruct", "tiny-mdm-instruct"):
        tok = AutoTokenizer.from_pretrained(str(pretrained_dir() / name), local_files_only=True)
        assert (tok.chat_template is None) == (not name.endswith("-instruct")), name


# -- the tokenised-data cache --------------------------------------------------------------------
def test_tokenised_data_is_cached_and_keyed_by_data_and_tokenizer(tmp_path, data_dir, monkeypatch, capsys):
    from dlm.data.tokenizer import train_bpe

    monkeypatch.setenv("DLM_CACHE_DIR", str(tmp_path / "cache"))
    first = Trainer(tiny_train_config(tmp_path, data_dir, "a"))
    assert "cached" not in capsys.readouterr().err
    files = list((tmp_path / "cache" / "tokenized").glob("*.safetensors"))
    assert len(files) == 1
    second = Trainer(tiny_train_config(tmp_path, data_dir, "b"))
    assert f"using the tokenised data cached in {files[0]}" in capsys.readouterr().err
    assert torch.equal(first.train_data, second.train_data) and torch.equal(first.val_data, second.val_data)
    assert second.data_stats == first.data_stats

    files[0].write_bytes(b"not a safetensors file")  # damaged: rebuilt, same data
    third = Trainer(tiny_train_config(tmp_path, data_dir, "c"))
    assert "is unreadable" in capsys.readouterr().err and torch.equal(third.train_data, first.train_data)

    other = tmp_path / "data2"
    shutil.copytree(data_dir, other)
    rows = [json.loads(line) for line in lzma.open(other / "train.jsonl.xz", "rt")]
    rows[0]["synopsis"] = "changed"
    with lzma.open(other / "train.jsonl.xz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    Trainer(tiny_train_config(tmp_path, other, "d"))
    assert "cached" not in capsys.readouterr().err

    tok_dir = tmp_path / "tok"
    train_bpe([r["description"] for r in rows], vocab_size=400).save_pretrained(str(tok_dir))
    Trainer(tiny_train_config(tmp_path, data_dir, "e", tokenizer=str(tok_dir)))
    assert "cached" not in capsys.readouterr().err
    assert len(list((tmp_path / "cache" / "tokenized").glob("*.safetensors"))) == 3


def test_sft_examples_round_trip_through_the_cache_format(tokenizer, data_dir):
    from dlm.data.debian import load_split
    from dlm.train.data import from_tensors, sft_examples, to_tensors

    examples, _ = sft_examples(tokenizer, load_split(data_dir, "validation")[:20], 256, 32, diffusion=True)
    back = from_tensors(to_tensors(examples, "train"), "train")
    assert [(e.prompt, e.answer) for e in back] == [(e.prompt, e.answer) for e in examples]


def test_bf16_mixed_precision_trains_and_is_a_setting(tmp_path, data_dir):
    """--mixed-precision bf16 autocasts on the CPU (in its own process: accelerate fixes the precision
    once per process): the run finishes, the setting is recorded, and changing it is refused."""
    out = tmp_path / "bf16"
    argv = [sys.executable, "-m", "dlm.cli", "train", "--out", str(out), "--objective", "causal", "--arch", "llama",
            "--d-model", "32", "--n-layers", "2", "--n-heads", "2", "--mlp-hidden", "64", "--max-positions", "256",
            "--data", str(data_dir), "--seq-len", "64", "--batch-size", "4", "--max-steps", "2", "--warmup-steps", "1",
            "--eval-every", "2", "--eval-batches", "1", "--no-progress", "--mixed-precision", "bf16"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    from dlm.resources import cpu_has_bf16

    assert ("no bf16 instructions" in proc.stderr) == (cpu_has_bf16() is False)  # emulated bf16 is slow: said
    log = json.loads((out / "training_log.json").read_text())
    assert log["config"]["mixed_precision"] == "bf16" and all(math.isfinite(e["loss"]) for e in log["log"])
    with pytest.raises(DLMError, match="--mixed-precision bf16 -> <unset>"):
        Trainer(TrainConfig(out=str(out), objective="causal", arch="llama", size=TINY, data=str(data_dir),
                            seq_len=64, batch_size=4, max_steps=2, warmup_steps=1, eval_every=2, eval_batches=1))
    with pytest.raises(DLMError, match="--mixed-precision must be no, bf16 or fp16"):
        TrainConfig(out="o", mixed_precision="fp8").validate()
