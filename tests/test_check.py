"""``dlm check``: the shipped models pass; deliberately broken checkpoints fail the check they break."""

import json
import math

import pytest
import torch

import dlm
from dlm.check import SENTENCES, SHIFT_MARGIN, failed, run_checks
from dlm.cli import main
from dlm.models.default import pretrained_dir
from dlm.models.diffusion_lm import DiffusionLM

FAMILY = ["tiny-ar", "tiny-a2d", "tiny-mdm", "tiny-ar-instruct", "tiny-a2d-instruct", "tiny-mdm-instruct"]


def by_name(results):
    return {r.name: r for r in results}


def variant(tmp_path, name, config=None, tokenizer_config=None, weights=None):
    """A copy of a shipped model: its files linked, config.json / tokenizer_config.json rewritten."""
    src = pretrained_dir() / name
    for f in src.iterdir():
        if f.name not in ("config.json", "tokenizer_config.json") and not (weights and f.suffix == ".safetensors"):
            (tmp_path / f.name).symlink_to(f)
    cfg = json.loads((src / "config.json").read_text())
    tok = json.loads((src / "tokenizer_config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config(cfg) if config else cfg))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(tok) if tokenizer_config else tok))
    if weights:
        from safetensors.torch import load_file, save_file

        save_file(weights(load_file(str(src / "model.safetensors"))), str(tmp_path / "model.safetensors"))
    return tmp_path


def test_every_shipped_model_passes():
    for name in FAMILY:
        model = dlm.load(name)
        results = by_name(run_checks(model))
        assert not failed(results.values()), name
        rows = ["next token"] if model.facts.causal else ["masked 15%", "masked 50%"]  # 100%: NLL not judged
        for row in rows:
            assert results[row].numbers["nll"] < math.log(model.facts.vocab_size), (name, row)
        first = results["next token" if model.facts.causal else "masked 15%"].numbers
        assert first["top1"] > first["baseline_top1"] / 2
        assert results["shift"].result == results["padding"].result == "pass", name
        assert results["padding"].numbers["max_abs_diff"] < 1e-4
        assert results["chat template"].result == ("pass" if "instruct" in name else "info")


def test_cli_table_and_json(capsys):
    assert main(["check", "tiny-a2d"]) == 0
    out = capsys.readouterr().out
    assert [c.strip() for c in out.splitlines()[0].split(" | ")] == ["check", "result", "value", "threshold / notes"]
    assert "masked 100%" in out and "| pass" in out
    assert main(["check", "tiny-ar", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["passed"] and record["causal"] and record["model"].endswith("tiny-ar") and record["seed"] == 0
    rows = {c["check"]: c for c in record["checks"]}
    assert "masked 15%" not in rows and rows["next token"]["top1"] > rows["next token"]["baseline_top1"]
    assert rows["shift"]["other_nll"] > rows["shift"]["registry_nll"] + 1  # the unshifted reading of an AR model


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dlm: error: ") and err.count("\n") == 1


def test_random_weights_fail_accuracy(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    path = variant(tmp_path, "tiny-a2d", weights=lambda w: {k: torch.randn(v.shape, generator=g) * 0.02
                                                            if v.dim() > 1 else v for k, v in w.items()})
    assert main(["check", str(path), "--json"]) == 1
    rows = {c["check"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    for level in ("masked 15%", "masked 50%", "masked 100%"):
        assert rows[level]["result"] == "fail" and rows[level]["top1"] < 0.02


def test_random_tiny_llada_fails(tiny_llada_tok_dir):
    results = by_name(run_checks(dlm.load(tiny_llada_tok_dir)))
    assert results["masked 15%"].result == "fail" and results["mask id"].result == "pass"


def test_mask_id_on_an_ordinary_token_fails(tmp_path, capsys):
    the = dlm.load("tiny-a2d").tokenizer.convert_tokens_to_ids("Ġthe")
    path = variant(tmp_path, "tiny-a2d", config=lambda c: {**c, "mask_token_id": the})
    assert main(["check", str(path)]) == 1
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("mask id "))
    assert "| fail" in row and "'Ġthe'" in row and "'<|mask|>' (3)" in row


def test_mask_id_predicted_everywhere_fails():
    model = dlm.load("tiny-mdm")
    with torch.no_grad():  # the mask token's (tied) embedding blown up: it dominates every output
        model.net.model.transformer.wte.weight[model.facts.mask_id] *= 200
    results = by_name(run_checks(model))
    assert results["mask predictions"].result == "fail" and results["mask predictions"].numbers["share"] > 0.5


def test_missing_eos_fails(tmp_path):
    path = variant(tmp_path, "tiny-a2d", config=lambda c: {k: v for k, v in c.items() if k != "eos_token_id"},
                   tokenizer_config=lambda t: {k: v for k, v in t.items() if k != "eos_token"})
    results = by_name(run_checks(dlm.load(path)))
    assert results["eos ids"].result == "fail" and results["eos ids"].value == "not set"
    assert results["masked 15%"].result == "pass"  # the rest of the model is fine


def test_sft_model_without_chat_template_warns(tmp_path):
    path = tmp_path / "no_template"
    path.mkdir()
    variant(path, "tiny-a2d-instruct")
    (path / "chat_template.jinja").unlink()
    results = by_name(run_checks(dlm.load(path)))
    assert results["chat template"].result == "warn" and not failed(results.values())


LLAMA_TO_LLADA = {"input_layernorm": "attn_norm", "self_attn.q_proj": "q_proj", "self_attn.k_proj": "k_proj",
                  "self_attn.v_proj": "v_proj", "self_attn.o_proj": "attn_out", "post_attention_layernorm": "ff_norm",
                  "mlp.gate_proj": "ff_proj", "mlp.up_proj": "up_proj", "mlp.down_proj": "ff_out"}


def as_llada(weights):
    """tiny-a2d's LLaMA tensors under LLaDA's names: the same computation, now read unshifted."""
    out = {"model.transformer.wte.weight": weights["model.embed_tokens.weight"],
           "model.transformer.ln_f.weight": weights["model.norm.weight"]}
    for k, v in weights.items():
        for theirs, ours in LLAMA_TO_LLADA.items():
            if f".{theirs}." in k:
                out[f"model.transformer.blocks.{k.split('.')[2]}.{ours}.weight"] = v
    return out


def as_llama(weights):
    """tiny-mdm's LLaDA tensors under LLaMA's names: the same computation, now read shifted."""
    out = {"model.embed_tokens.weight": weights["model.transformer.wte.weight"],
           "model.norm.weight": weights["model.transformer.ln_f.weight"]}
    for k, v in weights.items():
        for theirs, ours in LLAMA_TO_LLADA.items():
            if k.endswith(f".{ours}.weight") and ".blocks." in k:
                out[f"model.layers.{k.split('.')[3]}.{theirs}.weight"] = v
    return out


def llada_config(c):
    keep = ("bos_token_id", "eos_token_id", "pad_token_id", "mask_token_id", "eot_token_id", "vocab_size")
    return {**{k: c[k] for k in keep}, "model_type": "llada", "d_model": c["hidden_size"],
            "n_heads": c["num_attention_heads"], "n_kv_heads": c["num_key_value_heads"],
            "n_layers": c["num_hidden_layers"], "mlp_hidden_size": c["intermediate_size"],
            "embedding_size": c["vocab_size"], "max_sequence_length": c["max_position_embeddings"],
            "rope_theta": c["rope_parameters"]["rope_theta"], "rms_norm_eps": c["rms_norm_eps"],
            "weight_tying": True, "dlm_objective": "diffusion"}


def llama_config(_):
    return json.loads((pretrained_dir() / "tiny-a2d" / "config.json").read_text())  # tiny-mdm's sizes


@pytest.mark.parametrize("name, truth, config, weights", [
    ("tiny-a2d", "tiny-a2d", llada_config, as_llada),  # shifted, labelled unshifted (model_type llada)
    ("tiny-mdm", "tiny-mdm", llama_config, as_llama),  # unshifted, labelled shifted (model_type llama)
])
def test_wrong_shift_in_the_registry_warns(tmp_path, name, truth, config, weights):
    path = variant(tmp_path, name, config=config, weights=weights)
    wrong, right = dlm.load(path), dlm.load(truth)
    assert wrong.facts.shifted != right.facts.shifted
    ids = torch.tensor([[0] + right.tokenizer(SENTENCES[0])["input_ids"]])
    a, b = (wrong, right) if right.facts.shifted else (right, wrong)  # a unshifted reading: a[i] == b[i + 1]
    torch.testing.assert_close(a(ids).logits[:, :-1], b(ids).logits[:, 1:], atol=1e-4, rtol=1e-4)
    shift = by_name(run_checks(wrong))["shift"]
    assert shift.result == "warn" and shift.numbers["registry"] == ("shifted" if wrong.facts.shifted else "unshifted")
    assert shift.numbers["other_nll"] < shift.numbers["registry_nll"] - SHIFT_MARGIN
    assert shift.numbers["other_top1"] > shift.numbers["registry_top1"]
    assert by_name(run_checks(right))["shift"].result == "pass"


class IgnoresPadding(DiffusionLM):
    """A model whose padding handling is broken: the attention mask never reaches the network."""

    def forward(self, input_ids, attention_mask=None, **kw):
        return super().forward(input_ids, None, **kw)


@pytest.mark.parametrize("name", ["tiny-a2d", "tiny-mdm", "tiny-ar"])
def test_ignored_attention_mask_fails_padding(name):
    good = dlm.load(name)
    broken = IgnoresPadding(good.net, good.facts, good.config, good.tokenizer, good.path)
    results = by_name(run_checks(broken))
    assert results["padding"].result == "fail" and results["padding"].numbers["max_abs_diff"] > 0.1
