#!/usr/bin/env python
"""Derive Dream parity fixtures from Dream's own modeling code.

Run in an environment with torch, safetensors and transformers 4.46.x (the version Dream's remote
code was written for; transformers 5.x cannot import it)::

    python scripts/derive_dream_fixtures.py --reference-dir /path/to/dream_ref

``--reference-dir`` must hold Dream's three remote-code files, as released next to the
Dream-org/Dream-v0-Instruct-7B weights (``auto_map`` names the first two):

    modeling_dream.py, configuration_dream.py, generation_utils.py

This script contains no Dream code. It writes tiny random checkpoints in Dream's release layout
(config.json with ``model_type: "Dream"``, ``architectures: ["DreamModel"]`` and ``auto_map``;
Dream's tensor names; sharded safetensors with an index), copies the three files next to a scratch
copy, loads it with ``AutoModel.from_pretrained(..., trust_remote_code=True)`` (checking that no
tensor is missing or unexpected) and records the logits Dream's ``diffusion_generate`` computes at
its first step, captured with its ``generation_logits_hook_func``: the shifted logits
(``cat(l[:, :1], l[:, :-1])``) of ``[prompt | mask * gen]``, with Dream's own padding handling
(positions ``cumsum(mask) - 1``, pad queries and keys masked) for the padded case.

Outputs (tests/fixtures/dream/): tiny/ (untied head, two shards + index, generation_config.json),
tiny_tied/ (tied head, one file), expected_logits.safetensors (``<case>.input_ids``,
``<case>.attention_mask``, ``<case>.logits``), manifest.json (versions, hashes, cases).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DIR = REPO_ROOT / "tests" / "fixtures" / "dream"
REFERENCE_FILES = ("modeling_dream.py", "configuration_dream.py", "generation_utils.py")

VOCAB, MASK, EOS = 96, 90, 91  # tiny ids: the real ones (151666, 151643) need a 152064-row vocabulary
GEN = 6  # masked answer positions appended by diffusion_generate


def tiny_config(tied: bool) -> dict:
    """Dream-v0-Instruct-7B's config.json with every field kept and the sizes shrunk."""
    return {
        "architectures": ["DreamModel"],
        "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "bos_token_id": EOS,
        "eos_token_id": EOS,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 48,
        "mask_token_id": MASK,
        "max_position_embeddings": 128,
        "max_window_layers": 28,
        "model_type": "Dream",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "pad_token_id": EOS,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": tied,
        "torch_dtype": "float32",
        "transformers_version": "4.46.2",
        "use_cache": False,
        "use_sliding_window": False,
        "vocab_size": VOCAB,
    }


GENERATION_CONFIG = {  # as released, with the tiny ids
    "_from_model_config": True, "alg": "origin", "alg_temp": None, "bos_token_id": EOS, "eos_token_id": EOS,
    "eps": 0.001, "mask_token_id": None, "output_history": False, "pad_token_id": EOS, "steps": 512,
    "temperature": 0.0, "top_k": None, "top_p": None, "transformers_version": "4.46.2",
}


def tiny_tensors(cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """Random weights under Dream's tensor names, scaled so every part moves the logits."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.3):
        return (torch.randn(*shape, generator=g) * std).float()

    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    t = {"model.embed_tokens.weight": rnd(v, h, std=1.0)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t |= {
            p + "self_attn.q_proj.weight": rnd(h, h), p + "self_attn.q_proj.bias": rnd(h, std=0.1),
            p + "self_attn.k_proj.weight": rnd(kv, h), p + "self_attn.k_proj.bias": rnd(kv, std=0.1),
            p + "self_attn.v_proj.weight": rnd(kv, h), p + "self_attn.v_proj.bias": rnd(kv, std=0.1),
            p + "self_attn.o_proj.weight": rnd(h, h),
            p + "mlp.gate_proj.weight": rnd(f, h), p + "mlp.up_proj.weight": rnd(f, h),
            p + "mlp.down_proj.weight": rnd(h, f),
            p + "input_layernorm.weight": 1 + rnd(h, std=0.1),
            p + "post_attention_layernorm.weight": 1 + rnd(h, std=0.1),
        }
    t["model.norm.weight"] = 1 + rnd(h, std=0.1)
    if not cfg["tie_word_embeddings"]:
        t["lm_head.weight"] = rnd(v, h)
        t["lm_head.weight"][MASK] = 0.0  # as in a trained model, the mask id is never the top prediction
    return t


def write_checkpoint(out: Path, cfg: dict, tensors: dict[str, torch.Tensor], shards: int) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if shards == 1:
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    (out / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    names = list(tensors)
    cut = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:cut], names[cut:]), 1):
        fname = f"model-{i:05d}-of-{shards:05d}.safetensors"
        save_file({k: tensors[k] for k in part}, str(out / fname), metadata={"format": "pt"})
        weight_map |= {k: fname for k in part}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def load_reference(ckpt: Path, tensors: dict[str, torch.Tensor], tied: bool, ref_dir: Path, work: Path):
    import transformers

    scratch = work / ckpt.name
    shutil.copytree(ckpt, scratch)
    for f in REFERENCE_FILES:
        shutil.copy(ref_dir / f, scratch / f)
    if not (scratch / "generation_config.json").exists():  # Dream's from_pretrained reads one
        (scratch / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG))
    model = transformers.AutoModel.from_pretrained(
        str(scratch), trust_remote_code=True, local_files_only=True, torch_dtype=torch.float32)
    # every stored tensor landed under its own name, and nothing else is a parameter
    own = model.state_dict()
    for name, want in tensors.items():
        if name not in own or not torch.equal(own[name], want):
            sys.exit(f"{ckpt.name}: Dream's DreamModel did not load tensor {name!r} as stored")
    extra = set(dict(model.named_parameters())) - set(tensors) - ({"lm_head.weight"} if tied else set())
    if extra:
        sys.exit(f"{ckpt.name}: DreamModel has parameters the checkpoint lacks: {sorted(extra)}")
    if tied:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model.eval()


def first_step_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Dream's shifted logits of its first denoising step on [input_ids | mask * GEN]."""
    seen = []

    def hook(step, x, logits):
        if step == 0:
            seen.append((x.clone(), logits.detach().clone()))
        return logits

    torch.manual_seed(0)
    # the generation config Dream's from_pretrained read from generation_config.json; the release has
    # mask_token_id null there, so it is passed (as Dream's demos leave it to config.json)
    model.diffusion_generate(input_ids, generation_config=model.generation_config, attention_mask=attention_mask,
                             max_new_tokens=GEN, steps=2, temperature=0.0, alg="entropy", mask_token_id=MASK,
                             generation_logits_hook_func=hook)
    x, logits = seen[0]
    want = torch.cat([input_ids, torch.full((input_ids.shape[0], GEN), MASK)], dim=1)
    assert torch.equal(x, want), "unexpected canvas"
    return logits  # (B, P + GEN, V), aligned: logits[:, i] predicts token i


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-dir", required=True, type=Path)
    ap.add_argument("--out-dir", type=Path, default=FIXTURE_DIR)
    args = ap.parse_args()
    ref_dir = args.reference_dir.resolve()
    missing = [f for f in REFERENCE_FILES if not (ref_dir / f).is_file()]
    if missing:
        sys.exit(f"--reference-dir {ref_dir} lacks {missing}")
    torch.set_num_threads(1)
    sys.dont_write_bytecode = True
    out = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dream_fixtures_"))
    os.environ["HF_MODULES_CACHE"] = str(work / "hf_modules")  # remote code is copied there, not to ~/.cache
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, 88, (2, 7), generator=g)  # (B, P), no special ids
    padded = prompts.clone()
    padded[1, :3] = EOS  # row 1 left-padded with Dream's pad id
    pad_mask = torch.ones_like(padded)
    pad_mask[1, :3] = 0

    cases = {}
    for name, tied, shards, seed in (("tiny", False, 2, 0), ("tiny_tied", True, 1, 1)):
        cfg = tiny_config(tied)
        tensors = tiny_tensors(cfg, seed)
        write_checkpoint(out / name, cfg, tensors, shards)
        model = load_reference(out / name, tensors, tied, ref_dir, work)
        runs = [("full", prompts, None)] + ([("padded", padded, pad_mask)] if name == "tiny" else [])
        for kind, ids, am in runs:
            logits = first_step_logits(model, ids, am)
            full_mask = torch.ones(ids.shape[0], ids.shape[1] + GEN, dtype=torch.long)
            if am is not None:
                full_mask[:, : ids.shape[1]] = am
            canvas = torch.cat([ids, torch.full((ids.shape[0], GEN), MASK)], dim=1)
            cases[f"{name}.{kind}"] = {"input_ids": canvas, "attention_mask": full_mask, "logits": logits}

    flat = {f"{c}.{k}": v.contiguous() for c, d in cases.items() for k, v in d.items()}
    save_file(flat, str(out / "expected_logits.safetensors"), metadata={"format": "pt"})
    manifest = {
        "derived_with": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__},
        "reference_sha256": {f: hashlib.sha256((ref_dir / f).read_bytes()).hexdigest() for f in REFERENCE_FILES},
        "cases": sorted(cases),
        "gen_length": GEN, "mask_id": MASK, "pad_id": EOS,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
