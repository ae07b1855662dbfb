"""A README.md model card for a trained model directory, written from its training log."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path


def write_model_card(out: Path, run: dict, model) -> Path:
    cfg = run["config"]
    name = cfg.get("name") or out.name
    log = run["log"]
    evals = [e for e in log if "val_loss" in e]
    size = cfg["size"]
    warmup = run.get("warmup_steps", cfg["warmup_steps"])  # the steps used (the setting may be the default)
    kind = {"causal": "causal (autoregressive) language model",
            "mdm": "masked diffusion language model", "a2d": "diffusion language model adapted from an AR model",
            "idlm": "introspective diffusion language model (I-DLM: causal, mask slots draft ahead)",
            "dsl": "continuous-denoising diffusion language model (DSL: noisy embeddings through a converter; "
                   "decode with `--sampler dsl`)",
            "scope": "masked diffusion language model post-trained with SCOPE on its own sampling states "
                     "(decode with `--sampler d3im` to let it revise visible tokens)"}
    data = ("multi-step arithmetic word problems generated offline (`dlm.data.arith`)" if cfg["task"] == "arith"
            else "the Debian package-description corpus (`data/debian`)")
    lines = [
        f"# {name}",
        "",
        f"A {model.num_parameters() / 1e6:.1f}M-parameter {kind[cfg['objective']]} "
        f"(`model_type: {model.config['model_type']}`, {'shifted' if model.facts.shifted else 'unshifted'} logits), "
        f"trained by dlm on {data}.",
        "",
        "## Training",
        "",
        f"- objective: `{cfg['objective']}`, task: `{cfg['task']}`" + (f", started from `{cfg['init']}`" if cfg["init"] else
                                                                     f", from scratch ({cfg['arch']}: d_model {size['d_model']}, "
                                                                     f"{size['n_layers']} layers, {size['n_heads']} heads, "
                                                                     f"MLP {size['mlp_hidden']})"),
        f"- steps: {run['step']}, tokens: {run['tokens']:,}, wall time: {run['seconds'] / 60:.1f} min on "
        f"{run['processes']} process(es), {run['hardware'].get('gpu') or run['hardware']['processor']} "
        f"({run['hardware']['torch_threads']} torch threads)",
        f"- batch {cfg['batch_size']} x {cfg['grad_accum']} accumulation x {run['processes']} processes, sequence "
        f"length {cfg['seq_len']}, AdamW lr {cfg['lr']} (warm-up {warmup}, cosine to "
        f"{cfg['min_lr_ratio']}x), weight decay {cfg['weight_decay']}, seed {cfg['seed']}",
    ]
    if run.get("previous"):
        lines.append(f"- continued (`--continue-finished`) from the finished run at step {run['phase_start']}: its "
                     "weights, a new AdamW state and a new learning-rate schedule; its settings are under `previous` "
                     "in training_log.json")
    if cfg.get("lora") is not None:
        lines.append(f"- a LoRA adapter (rank {cfg['lora']}, alpha {cfg['lora_alpha']}, dropout {cfg['lora_dropout']}) "
                     f"on `{cfg['init']}`, whose weights stay frozen; this folder holds only the adapter "
                     "(`dlm_adapter.json` names the base and its sha256; `dlm.load` applies it)")
    if cfg["objective"] == "a2d":
        lines.append(f"- attention-mask annealing causal -> full over {cfg['anneal_steps']} steps, shift operation, "
                     "masked-diffusion ELBO (DiffuGPT recipe)")
    if cfg["objective"] == "idlm":
        from dlm.train.idlm import describe

        lines.append(describe(cfg))
    if cfg["task"] == "sft":
        answer = "synopsis + EOS" if cfg["objective"] in ("causal", "idlm") else "synopsis + EOS fill"
        lines.append(f"- SFT on the summarisation train split; answer block {cfg['answer_length']} tokens "
                     f"({answer}); instruction dropout {cfg['instruction_dropout']}")
    lines.append(f"- data: {json.dumps(run['data'])}")
    lines += ["", "## Validation", ""]
    if cfg["objective"] == "idlm":
        lines += ["Validation loss on the validation split (nats per token): the training loss L_mask + a L_clean at "
                  "the final stride; L_mask the mask slots' CE per answer token, L_clean the clean tokens' "
                  "next-token CE:", "", "| step | tokens | val loss | L_mask | L_clean |", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {e['step']} | {e['tokens']:,} | {e['val_loss']:.4f} | {e.get('val_loss_mask', float('nan')):.4f} "
                  f"| {e.get('val_loss_clean', float('nan')):.4f} |" for e in evals]
    else:
        lines += ["Validation loss on the validation split (nats per token; diffusion models: the masked-diffusion "
                  "ELBO with fixed noise, full attention; causal models: next-token cross-entropy):", "",
                  "| step | tokens | val loss |", "|---:|---:|---:|"]
        lines += [f"| {e['step']} | {e['tokens']:,} | {e['val_loss']:.4f} |" for e in evals]
    lines += ["", "## Reproduce", "", "```", "dlm train " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if
              sys.argv[1:2] == ["train"] else "see training_log.json for the settings", "```", "",
              f"Software: {json.dumps(run['versions'])}", ""]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path
