"""dlm train --objective idlm: the [x_t | x_0] input, its attention, the loss, the curriculum, runs."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dlm
from dlm.errors import DLMError
from dlm.models.adapters import quiet_peft
from dlm.models.loading import save_pretrained
from dlm.train.build import ModelSize, new_model
from dlm.train.config import settings_json
from dlm.train.data import SFTExample, collate_sft
from dlm.train.idlm import (IGNORE, LoraGate, clean_weight_for, idlm_inputs, idlm_logits, idlm_loss,
                            parse_stride_schedule, IDLMObjective)
from dlm.train.trainer import Trainer, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "data" / "tokenizer"
TINY = ModelSize(d_model=32, n_layers=2, n_heads=2, mlp_hidden=64, max_positions=256)
MASK = 3  # <|mask|> of the shipped tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER), local_files_only=True)


pytestmark = pytest.mark.usefixtures("tokenised_cache")  # the shared test cache (conftest)


@pytest.fixture(scope="module")
def ar_dir(tmp_path_factory, tokenizer):
    """A tiny random causal LM (llama) saved as a directory, without chat template (a base)."""
    tokenizer.chat_template = None
    out = tmp_path_factory.mktemp("ar")
    save_pretrained(new_model("llama", TINY, tokenizer, seed=2, objective="causal"), out)
    return out


@pytest.fixture(scope="module")
def model(tokenizer):
    return new_model("llama", TINY, tokenizer, seed=1, objective="idlm").eval()


# -- the input and its attention --------------------------------------------------------------------
def brute_force(real, b):
    """The rule, one query and key at a time: x_0 queries causal over x_0; an x_t query in block k sees
    x_t keys of block k at or before it and x_0 keys of blocks < k; padding keys hidden; the diagonal open."""
    B, L = len(real), len(real[0])
    allowed = torch.zeros(B, 2 * L, 2 * L, dtype=torch.bool)
    for r in range(B):
        pos = [max(0, sum(real[r][:i + 1]) - 1) for i in range(L)]  # real tokens before, and this one
        for q in range(2 * L):
            for k in range(2 * L):
                qi, ki, q0, k0 = q % L, k % L, q >= L, k >= L
                if q0 and k0:
                    ok = ki <= qi
                elif not q0 and not k0:
                    ok = pos[qi] // b == pos[ki] // b and ki <= qi
                else:
                    ok = not q0 and k0 and pos[ki] // b < pos[qi] // b
                allowed[r, q, k] = (ok and real[r][ki]) or q == k
    return allowed


@pytest.mark.parametrize("L, b, prompts, lengths, left", [
    (8, 1, None, None, False),  # pretraining, stride 2
    (12, 3, [3, 5], [12, 9], False),  # SFT, right padding, blocks straddling the prompt
    (9, 2, None, [9, 6], True),  # left padding: positions (and blocks) count real tokens only
    (6, 7, [2, 1], [6, 6], False),  # one block longer than the row
])
def test_attention_is_the_block_rule(L, b, prompts, lengths, left):
    g = torch.Generator().manual_seed(L)
    ids = torch.randint(10, 8000, (2, L), generator=g)
    lengths = lengths or [L, L]
    real = [[(i >= L - n) if left else (i < n) for i in range(L)] for n in lengths]
    attn = torch.tensor(real, dtype=torch.long)
    pl = None if prompts is None else torch.tensor(prompts)  # prompt tokens (not counting padding)
    inp = idlm_inputs(ids, MASK, b + 1, attention_mask=attn, prompt_lengths=pl)
    assert torch.equal(inp.allowed, brute_force(real, b))
    bias = inp.bias(torch.float32)
    assert bias.shape == (2, 1, 2 * L, 2 * L) and set(bias.unique().tolist()) <= {0.0, torch.finfo(torch.float32).min}
    # x_t keeps the prompt and masks every real answer token; x_0 is the row; one position per token in both halves
    for r in range(2):
        first = sum(not x for x in real[r]) if left else 0
        start = first + (1 if pl is None else prompts[r])
        want = [MASK if (real[r][i] and i >= start) else int(ids[r, i]) for i in range(L)]
        assert inp.input_ids[r, :L].tolist() == want and torch.equal(inp.input_ids[r, L:], ids[r])
        assert torch.equal(inp.position_ids[r, :L], inp.position_ids[r, L:])
        assert inp.position_ids[r, :L][torch.tensor(real[r])].tolist() == list(range(lengths[r]))
        # hidden i predicts token i + 1; nothing past the last real token
        last = max(i for i in range(L) if real[r][i])
        assert inp.targets[r, last].item() == IGNORE and inp.targets[r, first:last].tolist() == \
            ids[r, first + 1:last + 1].tolist()


def test_mask_slot_j_predicts_the_token_j_plus_2_past_the_clean_prefix(model):
    """Stride 4 (b = 3): the block at s sees the clean prefix x_<s only; its clean logit at s - 1
    predicts x_s, its mask slot j (at s + j) the target x_{s+j+1}: N = 4 tokens from one prefix."""
    torch.manual_seed(0)
    L, N, s = 14, 4, 6
    ids = torch.randint(10, 8000, (1, L))
    inp = idlm_inputs(ids, MASK, N)
    with torch.no_grad():
        logits = idlm_logits(model.net, inp)  # (1, 2L, V)
        noisy, clean = logits[:, :L], logits[:, L:]
        # the clean half is the causal LM itself: clean logit s - 1 predicts x_s
        torch.testing.assert_close(clean, model.net(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
        later = ids.clone()
        later[:, s:] = torch.randint(10, 8000, (1, L - s))  # everything from the block start on
        noisy_later = idlm_logits(model.net, idlm_inputs(later, MASK, N))[:, :L]
        prefix = ids.clone()
        prefix[0, s - 1] = (int(ids[0, s - 1]) + 1) % 8000  # the last clean token of the prefix
        noisy_prefix = idlm_logits(model.net, idlm_inputs(prefix, MASK, N))[:, :L]
    for j in range(N - 1):
        slot = s + j
        assert inp.input_ids[0, slot] == MASK and inp.answer[0, slot]
        target = int(inp.targets[0, slot])
        assert target == int(ids[0, slot + 1]) and (slot + 1) - (s - 1) == j + 2
        torch.testing.assert_close(noisy_later[0, slot], noisy[0, slot], rtol=0, atol=1e-5)  # sees nothing past s-1
        assert not torch.allclose(noisy_prefix[0, slot], noisy[0, slot], atol=1e-4)  # sees the prefix
    # the next block's first slot already sees x_s .. x_{s+2} through x_0
    assert not torch.allclose(noisy_later[0, s + N - 1], noisy[0, s + N - 1], atol=1e-4)


# -- the loss ---------------------------------------------------------------------------------------
def _sft_batch():
    g = torch.Generator().manual_seed(3)
    rows = [(5, 4), (3, 6), (7, 2)]  # (prompt, answer) lengths
    examples = [SFTExample(torch.randint(10, 8000, (p,), generator=g).tolist(),
                           torch.randint(10, 8000, (a,), generator=g).tolist()) for p, a in rows]
    return collate_sft(examples, pad_id=2), rows


def hand_loss(model, batch, stride, weight, rows=None):
    """L_mask, L_clean and the total from the full logits, one position at a time."""
    ids = batch["input_ids"]
    B, L = ids.shape
    inp = idlm_inputs(ids, MASK, stride, batch.get("attention_mask"), batch.get("prompt_lengths"))
    logits = idlm_logits(model.net, inp).float()
    mask_terms, clean_terms, answers = [], [], 0
    for r in range(B):
        p, a = rows[r] if rows else (1, L - 1)
        answers += a
        for i in range(p, p + a - 1):  # answer slots with a next token: x_t logit i -> x_{i+1}
            mask_terms.append(F.cross_entropy(logits[r, i], ids[r, i + 1]))
        for i in range(p - 1, p + a - 1):  # clean logits whose target is an answer token
            clean_terms.append(F.cross_entropy(logits[r, L + i], ids[r, i + 1]))
    l_mask = torch.stack(mask_terms).sum() / answers
    l_clean = torch.stack(clean_terms).mean()
    w = float(l_mask / l_clean) if weight == "auto" else weight
    return l_mask, l_clean, l_mask + w * l_clean


@pytest.mark.parametrize("task, stride, weight", [("sft", 3, 0.2), ("sft", 4, "auto"), ("pretrain", 2, 0.5)])
def test_loss_is_the_hand_computation(model, task, stride, weight):
    if task == "sft":
        batch, rows = _sft_batch()
    else:
        batch, rows = {"input_ids": torch.randint(10, 8000, (2, 11), generator=torch.Generator().manual_seed(4))}, None
    with torch.no_grad():
        got = idlm_loss(model.net, batch, MASK, stride, weight)
        l_mask, l_clean, total = hand_loss(model, batch, stride, weight, rows)
    assert got.mask == pytest.approx(float(l_mask), rel=1e-5) and got.clean == pytest.approx(float(l_clean), rel=1e-5)
    torch.testing.assert_close(got.loss, total, rtol=1e-5, atol=1e-6)
    if weight == "auto":
        assert got.weight == pytest.approx(got.mask / got.clean, rel=1e-5)
        assert float(got.loss) == pytest.approx(2 * got.mask, rel=1e-5)


def test_auto_weight_has_no_gradient_of_its_own(model):
    """auto: a = sg(L_mask) / sg(L_clean) - the gradient is grad L_mask + a grad L_clean, a constant."""
    batch, _ = _sft_batch()
    params = [p for p in model.net.parameters()]

    def grads(weight):
        model.net.zero_grad()
        out = idlm_loss(model.net, batch, MASK, 4, weight)
        out.loss.backward()
        return out, [p.grad.clone() for p in params]

    auto, g_auto = grads("auto")
    _, g_fixed = grads(auto.weight)
    for a, b in zip(g_auto, g_fixed):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    model.net.zero_grad()


def test_reference_defaults_and_the_stride_curriculum():
    assert [clean_weight_for(n, None) for n in (2, 3, 4, 8)] == [0.2, 0.2, "auto", "auto"]
    assert clean_weight_for(4, 0.7) == 0.7
    assert parse_stride_schedule("2:0, 4:200") == [(2, 0), (4, 200)]
    cfg = TrainConfig(out="x", objective="idlm", init="m", stride_schedule="2:0,3:5,4:9", max_steps=20).resolved()
    obj = IDLMObjective(cfg, MASK)
    assert [obj.stride_at(s) for s in (0, 4, 5, 8, 9, 19)] == [2, 2, 3, 3, 4, 4] and obj.final_stride == 4
    assert TrainConfig(out="x", objective="idlm", init="m").resolved().stride == 4  # the default, recorded
    with pytest.raises(DLMError, match="stride 8 is longer than --seq-len 6"):
        TrainConfig(out="x", objective="idlm", init="m", stride=8, seq_len=6).validate()
    # settings of other objectives stay as before idlm existed (their runs still resume)
    assert not {"stride", "stride_schedule", "clean_weight", "lora_mask_slots_only"} & set(
        settings_json(TrainConfig(out="x", objective="mdm")))


# -- R-ISD: LoRA at mask slots only -----------------------------------------------------------------
def test_lora_gate_leaves_clean_tokens_to_the_base_model(tokenizer):
    from peft import LoraConfig, get_peft_model

    base = new_model("llama", TINY, tokenizer, seed=5, objective="idlm").eval()
    ids = torch.randint(10, 8000, (2, 12), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want_clean = base.net(input_ids=ids).logits
        base_noisy = idlm_logits(base.net, idlm_inputs(ids, MASK, 4))[:, :12]
    with quiet_peft():
        net = get_peft_model(base.net, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(7))
    gate = LoraGate().attach(net)
    inp = idlm_inputs(ids, MASK, 4)
    gate.value = torch.cat([inp.answer, torch.zeros_like(inp.answer)], 1)[..., None]
    with torch.no_grad():
        gated = idlm_logits(net, inp)
        torch.testing.assert_close(gated[:, 12:], want_clean, rtol=1e-5, atol=1e-5)  # clean: the base exactly
        assert not torch.allclose(gated[:, :12], base_noisy, atol=1e-3)  # mask slots: the adapter acts
        gate.value = None
        assert not torch.allclose(idlm_logits(net, inp)[:, 12:], want_clean, atol=1e-3)  # ungated: everywhere
        gate.value = torch.ones(1, 5, 1)
        with pytest.raises(DLMError, match="gate was set for"):  # a gate of another input is never applied
            idlm_logits(net, inp)
    gate.detach()


# -- dlm train --objective idlm ---------------------------------------------------------------------
def _cfg(tmp_path, data_dir, ar_dir, name, task="pretrain", **kw):
    settings = dict(out=str(tmp_path / name), data=str(data_dir), init=str(ar_dir), objective="idlm", task=task,
                    seq_len=96 if task == "sft" else 32, answer_length=16, batch_size=4, max_steps=4, eval_every=2,
                    eval_batches=1, save_every=10, warmup_steps=1, lr=1e-2, progress=False)
    settings.update(kw)
    return TrainConfig(**settings)


@pytest.mark.parametrize("task, lora", [("pretrain", None), ("sft", 4), ("sft", None), ("pretrain", 4)])
def test_idlm_run_resumes_and_saves_an_introspective_model(tmp_path, data_dir, ar_dir, task, lora):
    kw = dict(task=task, lora=lora, stride_schedule="2:0,3:2")
    cut = Trainer(_cfg(tmp_path, data_dir, ar_dir, "run", max_minutes=1e-9, **kw)).train()
    assert not cut["finished"] and cut["step"] == 1 and (tmp_path / "run" / "checkpoint").exists()
    done = Trainer(_cfg(tmp_path, data_dir, ar_dir, "run", **kw)).train()
    assert done["finished"] and done["step"] == 4
    log = done["log"]
    assert [e["stride"] for e in log] == [2, 2, 3, 3]
    assert all(e["clean_weight"] == 0.2 and e["loss_mask"] > 0 and e["loss_clean"] > 0 for e in log)
    assert all(e["loss"] == pytest.approx(e["loss_mask"] + 0.2 * e["loss_clean"], abs=2e-3) for e in log)
    assert "val_loss_mask" in log[1] and "val_loss_clean" in log[3]
    m = dlm.load(tmp_path / "run")
    assert m.facts.causal and m.facts.introspective and m.facts.shifted and m.facts.mask_id == MASK
    assert m.config["dlm_objective"] == "idlm" and m.config["dlm_idlm"]["stride"] == 3
    assert m.config["dlm_idlm"]["stride_schedule"] == "2:0,3:2"
    assert m.config["dlm_generation"] == ({"gen_length": 16, "stride": 3} if task == "sft" else {"stride": 3})
    card = (tmp_path / "run" / "README.md").read_text()
    assert "introspective" in card and "N = 2 from step 0, N = 3 from step 2" in card and "| L_mask |" in card
    if lora:  # an adapter directory; the mask row trained with it
        meta = json.loads((tmp_path / "run" / "dlm_adapter.json").read_text())
        assert meta["config"]["dlm_objective"] == "idlm" and meta["lora"]["trainable_token_indices"] == [MASK]
    if task == "pretrain" and lora is None:  # the interrupted run ended where an uninterrupted one does
        Trainer(_cfg(tmp_path, data_dir, ar_dir, "straight", **kw)).train()
        a, b = dlm.load(tmp_path / "straight"), m
        for (k, va), (_, vb) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
            torch.testing.assert_close(va, vb, msg=k)


def test_lora_mask_slots_only_run(tmp_path, data_dir, ar_dir):
    """R-ISD: the adapter acts at mask slots only - also in the backward recompute of gradient checkpointing."""
    kw = dict(task="sft", lora=4, lora_mask_slots_only=True, stride=4, clean_weight="auto", max_steps=2)
    trainer = Trainer(_cfg(tmp_path, data_dir, ar_dir, "risd", **kw))
    result = trainer.train()
    assert result["finished"] and [e["stride"] for e in result["log"]] == [4, 4]
    assert all(e["loss"] == pytest.approx(2 * e["loss_mask"], abs=2e-3) for e in result["log"])  # auto
    meta = json.loads((tmp_path / "risd" / "dlm_adapter.json").read_text())
    assert meta["lora"]["trainable_token_indices"] == []  # the mask row stays the base's
    assert meta["config"]["dlm_idlm"]["lora_mask_slots_only"] is True
    # the trained adapter leaves the clean half to the base model
    base = dlm.load(ar_dir)
    ids = torch.randint(10, 8000, (1, 10), generator=torch.Generator().manual_seed(8))
    inp = idlm_inputs(ids, MASK, 4)
    trainer.idlm.gate.value = torch.cat([inp.answer, torch.zeros_like(inp.answer)], 1)[..., None]
    net = trainer.model.net.eval()
    with torch.no_grad():
        torch.testing.assert_close(idlm_logits(net, inp)[:, 10:], base.net(input_ids=ids).logits, rtol=1e-5,
                                   atol=1e-5)
    trainer.idlm.gate.detach()
    checkpointed = Trainer(_cfg(tmp_path, data_dir, ar_dir, "risd_gc", gradient_checkpointing=True, **kw)).train()
    assert [e["loss"] for e in checkpointed["log"]] == pytest.approx([e["loss"] for e in result["log"]], abs=1e-4)
    a, b = (dlm.load(tmp_path / name, merge=False).net.state_dict() for name in ("risd", "risd_gc"))
    for k in (k for k in a if "lora_" in k):
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
    # loaded, the adapter stays apart and is gated by the input: clean tokens run the base model
    # exactly, mask tokens the adapter, so isd at T = 0 commits the base model's own greedy tokens
    risd = dlm.load(tmp_path / "risd")
    assert risd.facts.introspective and type(risd.net).__name__ == "PeftModel"
    with pytest.raises(dlm.CheckpointError, match="acts at mask slots only"):
        dlm.load(tmp_path / "risd", merge=True)
    masked = ids.clone()
    masked[0, 6:] = MASK
    with torch.no_grad():
        assert torch.equal(risd.net(input_ids=ids).logits, base.net(input_ids=ids).logits)
        got, ref = risd.net(input_ids=masked).logits, base.net(input_ids=masked).logits
    assert torch.equal(got[0, :6], ref[0, :6]) and not torch.allclose(got[0, 6:], ref[0, 6:])
    prompt = ids[:, :5]
    out = dlm.generate(risd, prompt, sampler="isd", gen_length=12, stride=4, stop_at_eos=False)
    with pytest.raises(DLMError, match="acts only at its mask token"):
        dlm.generate(risd, prompt, sampler="isd", gen_length=12, mask_id=MASK + 1)
    assert torch.equal(out, dlm.generate(base, prompt, sampler="ar", gen_length=12, stop_at_eos=False))


@pytest.mark.parametrize("argv, message", [
    (["--init", "tiny-ar", "--stride", "1"], "--stride must be >= 2"),
    (["--init", "tiny-ar", "--stride-schedule", "2:5"], "must start at step 0"),
    (["--init", "tiny-ar", "--stride-schedule", "2:0,3:0"], "the steps must increase"),
    (["--init", "tiny-ar", "--stride-schedule", "two"], "STRIDE:FROM_STEP"),
    (["--init", "tiny-ar", "--stride-schedule", "2:0,4:5000"], "never reached in --max-steps 1000"),
    (["--init", "tiny-ar", "--stride", "3", "--stride-schedule", "2:0"], "pass one"),
    (["--init", "tiny-ar", "--clean-weight", "0"], "--clean-weight must be a positive number or auto"),
    (["--init", "tiny-ar", "--clean-weight", "lots"], "--clean-weight must be a positive number or auto"),
    (["--init", "tiny-ar", "--lora-mask-slots-only"], "pass --lora RANK too"),
    (["--init", "tiny-ar", "--anneal-steps", "10"], "--anneal-steps is for a2d"),
    (["--arch", "llada"], "--objective idlm trains a causal LM: pass --arch llama"),
    (["--init", "tiny-mdm"], "is a LLaDA model (bidirectional attention, unshifted logits)"),
    (["--init", "tiny-a2d"], "is a diffusion model (full attention)"),
    (["--init", "tiny-ar", "--objective", "mdm", "--stride", "4"], "--stride is for --objective idlm"),
])
def test_bad_idlm_flags(capsys, tmp_path, argv, message):
    from dlm.cli import main

    argv = ["--objective", "idlm", *argv] if "--objective" not in argv else argv
    code = main(["train", "--out", str(tmp_path / "o"), "--no-progress", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
