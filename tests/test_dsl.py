"""DSL (continuous denoising): modules, checkpoint layout, SNR schedule, sampler and training objective."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import dlm
from dlm.errors import CheckpointError, DLMError
from dlm.models.dsl import Converter, DSLModules, new_dsl, noise_embedding, topk_expected_embedding
from dlm.models.loading import save_pretrained
from dlm.sampling.batching import left_pad
from dlm.sampling.dsl import budget_noise_scale, snr_schedule
from dlm.train.dsl import dsl_loss, sample_snr


@pytest.fixture(scope="module")
def llada_dsl():
    model = dlm.load("tiny-mdm")
    model.attach_dsl(new_dsl(model.input_embeddings().weight, model.facts.mask_id, noise_dim=16))
    return model


@pytest.fixture(scope="module")
def shifted_dsl():
    model = dlm.load("tiny-a2d-instruct")
    model.attach_dsl(new_dsl(model.input_embeddings().weight, model.facts.mask_id, noise_dim=16))
    return model


def test_noise_embedding_is_seeded_unit_rows():
    E = noise_embedding(50, 8, seed=3)
    assert E.shape == (50, 8)
    assert torch.allclose(E.norm(dim=-1), torch.ones(50))
    assert torch.equal(E, noise_embedding(50, 8, seed=3))
    assert not torch.equal(E, noise_embedding(50, 8, seed=4))
    torch.manual_seed(3)  # the reference: nn.Embedding's normal_ init under manual_seed, normalised
    ref = torch.nn.Embedding(50, 8)
    assert torch.equal(E, F.normalize(ref.weight.data, dim=-1))


def test_converter_reads_clean_tokens_and_noise():
    wte = torch.randn(30, 12)
    dsl = new_dsl(wte, mask_id=29, noise_dim=24, beta=1.0)
    conv = dsl.converter
    W, c = conv.backbone_embedding.weight, conv.backbone_embedding.bias
    assert torch.equal(W[:, :30], wte.T) and torch.equal(W[:, 30], wte[29])
    assert conv.logit_bias[-1].item() == pytest.approx(math.log(30)) and not conv.logit_bias[:-1].any()
    ids = torch.tensor([[3, 7, 11]])
    z = 200.0 * dsl.noise_embed.weight[ids]  # a very high SNR, no noise
    p = conv.token_probs(z)
    assert p.shape == (1, 3, 31) and torch.equal(p.argmax(-1), ids)
    h = conv(z)
    assert torch.allclose(h, wte[ids] + c, atol=1e-4)
    p0 = conv.token_probs(torch.zeros(1, 2, 24))  # pure noise: half the mass on the extra slot
    assert p0[0, 0, -1].item() == pytest.approx(0.5)
    assert torch.allclose(conv(torch.zeros(1, 1, 24)), 0.5 * wte[29] + 0.5 * wte.mean(0) + c, atol=1e-5)
    # beta overrides the stored one
    assert not torch.allclose(conv.token_probs(z * 0.01), conv.token_probs(z * 0.01, beta=5.0))


def test_topk_expected_embedding():
    E = F.normalize(torch.randn(10, 4), dim=-1)
    logits = torch.randn(2, 3, 10)
    full = topk_expected_embedding(logits, E, top_k=10)
    assert torch.allclose(full, F.softmax(logits, -1) @ E, atol=1e-6)
    top1 = topk_expected_embedding(logits, E, top_k=1)
    assert torch.allclose(top1, E[logits.argmax(-1)])


@pytest.mark.parametrize("shards", [None, 200_000])
def test_released_layout_round_trip(tmp_path, llada_dsl, shards):
    out = save_pretrained(llada_dsl, tmp_path / "m", max_shard_bytes=shards)
    from dlm.models.loading import read_state_dict

    tensors, _ = read_state_dict(out)
    for key in ("noise_embed.weight", "converter.beta", "converter.logit_bias", "converter.backbone_embedding.weight",
                "converter.backbone_embedding.bias", "converter.embed.weight", "log_snr_max"):
        assert key in tensors
    assert any(k.startswith("model.transformer.") for k in tensors)
    back = dlm.load(out)
    assert back.dsl is not None
    for k, v in llada_dsl.dsl.state_tensors().items():
        assert torch.equal(back.dsl.state_tensors()[k], v), k
    ids = torch.tensor([[5, 6, 7]])
    a = dlm.generate(llada_dsl, ids, sampler="dsl", steps=4, gen_length=6, seed=1)
    assert torch.equal(a, dlm.generate(back, ids, sampler="dsl", steps=4, gen_length=6, seed=1))


def test_incomplete_dsl_checkpoint_is_refused(tmp_path, llada_dsl):
    from safetensors.torch import load_file, save_file

    out = save_pretrained(llada_dsl, tmp_path / "m")
    tensors = load_file(str(out / "model.safetensors"))
    del tensors["converter.logit_bias"]
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match="converter.logit_bias"):
        dlm.load(out)


def test_snr_schedules():
    assert [round(v, 3) for v in snr_schedule(8).tolist()] == [0.01, 7.0, 15.363, 33.717, 74.0]
    for steps, n in ((16, 8), (32, 16), (64, 32), (4, 2), (6, 3)):
        s = snr_schedule(steps)
        assert len(s) == n + 1 and bool((s[1:] > s[:-1]).all())
    assert snr_schedule(16)[-1].item() == pytest.approx(74.0)  # S <= 20 never reaches 100
    assert snr_schedule(32)[-1].item() == pytest.approx(100.0)
    assert snr_schedule(64)[2].item() == pytest.approx(7 * (74 / 7) ** (1 / 28), rel=1e-5)
    ll = snr_schedule(8, "loglinear")
    assert torch.allclose(ll, torch.exp(torch.linspace(math.log(0.01), math.log(100), 5)))
    assert [budget_noise_scale(n) for n in (8, 16, 32, 64)] == [0.1, 0.05, 0.01, 0.005]


@pytest.mark.parametrize("which", ["llada_dsl", "shifted_dsl"])
def test_sampler_nfe_history_and_determinism(request, which):
    model = request.getfixturevalue(which)
    ids = torch.tensor([[5, 6, 7, 8]])
    out = dlm.generate(model, ids, sampler="dsl", steps=8, gen_length=10, seed=42, return_dict=True,
                       output_history=True)
    assert out.nfe == 9  # 4 Heun steps x 2 passes + the readout
    assert out.stats["heun_steps"] == 4 and out.stats["noise_scale"] == 0.1
    assert out.stats["beta"] == pytest.approx(2 * float(model.dsl.converter.beta.detach()))
    assert out.history.shape == (6, 1, 14)  # start, 4 steps, readout
    assert torch.equal(out.history[-1], out.sequences.cpu())
    assert not (out.sequences[:, 4:] == model.facts.mask_id).any()
    again = dlm.generate(model, ids, sampler="dsl", steps=8, gen_length=10, seed=42)
    assert torch.equal(again, out.sequences)
    assert dlm.generate(model, ids, sampler="dsl", steps=32, gen_length=10, seed=42, return_dict=True).nfe == 33


def _ode_reference(model, ids, steps, gen_length, seed):
    """The probability-flow ODE written out directly: y' = (x_hat(y, s) - y) / s, Heun steps."""
    dsl, P = model.dsl, ids.shape[1]
    E = dsl.noise_embed.weight.float()
    beta = 2 * float(dsl.converter.beta.detach())
    gen = torch.Generator().manual_seed(seed)
    y = F.normalize(torch.randn(1, gen_length, dsl.noise_dim, generator=gen), dim=-1)
    pe = model.input_embeddings()(ids)

    def logits_at(yy, s):
        h = dsl.converter(s * yy, beta)
        return model(None, inputs_embeds=torch.cat([pe, h], 1)).logits[:, P:].float()

    snrs = snr_schedule(steps)
    for s, t in zip(snrs[:-1], snrs[1:]):
        f = (topk_expected_embedding(logits_at(y, s), E, 512) - y) / s
        y_e = y + f * (t - s)
        f_e = (topk_expected_embedding(logits_at(y_e, t), E, 512) - y_e) / t
        y = y + 0.5 * (f + f_e) * (t - s)
    return logits_at(y, snrs[-1]).argmax(-1)


def test_ode_is_the_sde_at_noise_zero(llada_dsl):
    ids = torch.tensor([[5, 6, 7]])
    out = dlm.generate(llada_dsl, ids, sampler="dsl", steps=8, gen_length=8, seed=[3], noise_scale=0.0)
    assert torch.equal(out[:, 3:], _ode_reference(llada_dsl, ids, 8, 8, 3))
    sde = dlm.generate(llada_dsl, ids, sampler="dsl", steps=8, gen_length=8, seed=[3], noise_scale=5.0)
    assert not torch.equal(sde, out)  # the noise does act


@pytest.mark.parametrize("which", ["llada_dsl", "shifted_dsl"])
def test_padded_batch_rows_equal_their_single_runs(request, which):
    model = request.getfixturevalue(which)
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    x, am = left_pad(model, prompts)
    batch = dlm.generate(model, x, am, sampler="dsl", steps=8, gen_length=6, seed=[1, 2])
    for row, (p, s) in enumerate(zip(prompts, (1, 2))):
        alone = dlm.generate(model, torch.tensor([p]), sampler="dsl", steps=8, gen_length=6, seed=[s])
        assert torch.equal(batch[row, -6:], alone[0, -6:])


def test_sampler_validation(llada_dsl):
    ids = torch.tensor([[5, 6]])
    for bad, msg in (({"steps": 7}, "even"), ({"steps": 2}, ">= 4"), ({"schedule": "cosine"}, "schedule"),
                     ({"noise_scale": -1.0}, "noise_scale"), ({"beta": 0.0}, "beta"), ({"top_k": 0}, "top_k"),
                     ({"gen_length": 0}, "gen_length"), ({"steps": 10**7}, "1,000,000")):
        with pytest.raises(DLMError, match=msg):
            dlm.generate(llada_dsl, ids, sampler="dsl", **bad)
    with pytest.raises(DLMError, match="needs a DSL model"):
        dlm.generate(dlm.load("tiny-mdm"), ids, sampler="dsl", steps=4, gen_length=4)


def test_default_sampler_of_a_dsl_model(llada_dsl):
    from dlm.sampling import default_sampler

    assert default_sampler(llada_dsl) == "dsl"


def test_sample_snr_mixture():
    torch.manual_seed(0)
    s = sample_snr(400, 32, snr_max=100.0)
    assert s.shape == (400, 32) and s.dtype == torch.float32
    varies = (s.max(1).values > 50) & (s.min(1).values < 1)  # ROAR rows: low and high SNRs
    assert 15 < int(varies.sum()) < 70  # ~ one row in ten
    rest = s[~varies]
    assert float(rest.max()) <= 40.0 and float(rest.min()) > 0
    assert float(s.max()) <= 100.0
    assert bool((rest.std(1) > 0).all())  # per token
    torch.manual_seed(0)
    per_seq = sample_snr(400, 32, per_token=False)
    constant = (per_seq == per_seq[:, :1]).all(1)
    assert float(constant.float().mean()) > 0.8  # one log-normal SNR per sequence (ROAR rows vary)
    assert float((s == s[:, :1]).all(1).float().mean()) < 0.05


def test_dsl_loss_trains_the_converter_not_e_or_head(shifted_dsl):
    model = shifted_dsl
    model.train()
    ids = torch.randint(20, 200, (2, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "prompt_lengths": torch.tensor([4, 5])}
    model.dsl.noise_embed.weight.requires_grad_(False)
    for p in model.output_head().parameters():
        p.requires_grad_(False)
    loss = dsl_loss(model, batch, shifted=True)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    conv = model.dsl.converter
    assert conv.beta.grad is not None and conv.logit_bias.grad is not None
    assert model.dsl.noise_embed.weight.grad is None
    model.zero_grad(set_to_none=True)
    model.eval()


def test_train_dsl_lora_and_full(tmp_path):
    from dlm.train.config import TrainConfig
    from dlm.train.trainer import Trainer

    for lora in (None, 4):
        out = tmp_path / f"dsl-{lora}"
        cfg = TrainConfig(out=str(out), objective="dsl", task="sft", init="tiny-a2d-instruct", max_steps=2,
                          batch_size=2, eval_every=2, eval_batches=1, save_every=2, dsl_noise_dim=8, lr=1e-3,
                          progress=False, lora=lora)
        result = Trainer(cfg).train()
        assert result["finished"]
        model = dlm.load(out)
        assert model.dsl is not None and model.dsl.noise_dim == 8
        assert model.config["dlm_dsl"]["converter_weight"] == ("trained" if lora is None else "input_embedding")
        text = dlm.generate(model, torch.tensor([[5, 6, 7]]), steps=4, gen_length=4)  # the default sampler: dsl
        assert text.shape == (1, 7)
    assert (tmp_path / "dsl-4" / "dsl.safetensors").stat().st_size < 100_000


def test_dsl_options_need_the_objective():
    from dlm.train.config import TrainConfig

    with pytest.raises(DLMError, match="--objective dsl"):
        TrainConfig(out="x", objective="mdm", dsl_noise_dim=8).validate()
    with pytest.raises(DLMError, match="causal LM"):
        from dlm.train.build import for_objective

        for_objective(dlm.load("tiny-ar"), "dsl", "tiny-ar")


def test_data_under_a_hidden_folder_is_found(tmp_path):
    # a checkout inside a hidden folder (e.g. ~/.work/dlm) found no eval data: only folders below the data
    # path are skipped when hidden
    from dlm.eval.datafiles import split_files

    data = tmp_path / ".hidden" / "debian"
    (data / ".cache").mkdir(parents=True)
    (data / "test.jsonl").write_text('{"a": 1}\n')
    (data / ".cache" / "test.jsonl").write_text('{"a": 2}\n')
    assert split_files(data, "test") == [data / "test.jsonl"]


def test_continuing_a_finished_lora_dsl_run_keeps_its_converter(tmp_path):
    from dlm.train.config import TrainConfig
    from dlm.train.trainer import Trainer

    out = tmp_path / "dsl"
    kw = dict(out=str(out), objective="dsl", task="sft", init="tiny-a2d-instruct", batch_size=2, eval_every=2,
              eval_batches=1, save_every=2, dsl_noise_dim=8, lr=1e-2, progress=False, lora=4)
    Trainer(TrainConfig(max_steps=2, **kw)).train()
    first = dlm.load(out).dsl.state_tensors()
    trainer = Trainer(TrainConfig(max_steps=3, continue_finished=True, **kw))
    assert torch.equal(trainer.model.dsl.converter.logit_bias.detach(), first["converter.logit_bias"])
    trainer.train()
    assert not torch.equal(dlm.load(out).dsl.state_tensors()["converter.logit_bias"], first["converter.logit_bias"])
