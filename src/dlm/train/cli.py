"""``dlm train``: argument parsing for :class:`dlm.train.trainer.Trainer`."""

from __future__ import annotations

import argparse
import json

from dlm.errors import DLMError
from dlm.train.build import ARCHS, ModelSize
from dlm.train.objectives import OBJECTIVES
from dlm.train.config import DEFAULT_WARMUP

SIZE_OPTIONS = ("d_model", "n_layers", "n_heads", "mlp_hidden", "max_positions")
NEW_MODEL_OPTIONS = ("arch", "tokenizer", *SIZE_OPTIONS)  # refused with --init, not ignored


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None ones (those help lines say what the default is) and switches'."""

    def _get_help_string(self, action):
        return action.help if action.default is None or action.nargs == 0 else super()._get_help_string(action)


def add_parser(sub) -> None:
    t = sub.add_parser(
        "train", help="train or adapt a model (causal LM, masked diffusion, AR -> diffusion, introspective, SFT)",
        description="Train on the Debian corpus. Runs on CPU as is; `accelerate launch dlm train ...` "
                    "(or `accelerate launch -m dlm.cli train ...`) scales it to several processes/GPUs. "
                    "OUT/checkpoint is written every --save-every steps, when --max-minutes runs out and on "
                    "Ctrl-C; rerunning the same command resumes from it. Rerunning it on a finished OUT does "
                    "nothing; other settings on a finished OUT are refused unless --continue-finished is given. "
                    "Tokenised data is cached in $DLM_CACHE_DIR/tokenized (default: ~/.cache/dlm/tokenized, "
                    "or $XDG_CACHE_HOME/dlm/tokenized).",
        formatter_class=_Help)
    t.add_argument("--out", required=True,
                   help="output directory (model, card, checkpoint): new, empty, or a dlm training run")
    t.add_argument("--objective", choices=OBJECTIVES, default="mdm",
                   help="causal: next-token LM; mdm: masked-diffusion ELBO; a2d: AR -> diffusion adaptation; "
                        "idlm: introspective training of a causal LM (I-DLM: [x_t | x_0] input, N - 1 mask slots "
                        "per block draft the next tokens; decoded by the isd sampler); dsl: continuous denoising "
                        "(DSL-LLaDA: noisy embeddings through a converter; decoded by the dsl sampler); scope: SCOPE-style "
                        "post-training of a diffusion model on its own sampling states (masks filled with its own "
                        "draws, supervised back to the truth) so that revision samplers (d3im) can repair them")
    t.add_argument("--task", choices=["pretrain", "sft", "arith"], default="pretrain",
                   help="pretrain on packed text (the model is saved without a chat template), SFT on "
                        "(description -> synopsis) pairs in the chat template (saved with the model), or arith: "
                        "SFT on multi-step arithmetic word problems generated offline (dlm.data.arith; the eval "
                        "task arith scores its held-out test split)")
    t.add_argument("--init", default=None, help="start from this model directory or shipped model name "
                                                "(default: a new model of --arch and the size options)")
    t.add_argument("--continue-finished", action="store_true",
                   help="OUT holds a finished run: train its model further, from its last step to a higher "
                        "--max-steps (other settings may change too). A finished run keeps no optimizer state, so "
                        "this starts a new AdamW state and a new warm-up + cosine schedule from that step, like "
                        "--init OUT but in place, keeping the log")
    t.add_argument("--lora", type=int, default=None, metavar="RANK",
                   help="train a LoRA adapter of this rank on the --init model instead of all its weights (plus "
                        "the mask token's embedding row when a diffusion objective adapts a causal LM); OUT becomes "
                        "a PEFT adapter directory with dlm_adapter.json, which dlm.load / --model read over the base")
    t.add_argument("--lora-alpha", type=float, default=None, help="LoRA scaling alpha (default: 2 x RANK)")
    t.add_argument("--lora-dropout", type=float, default=None, help="dropout on the LoRA input (default 0)")
    t.add_argument("--lora-targets", default=None, metavar="NAMES",
                   help="comma-separated names of the linear layers in the transformer blocks that get an adapter "
                        "(default: attention and MLP projections - LLaMA family q_proj,k_proj,v_proj,o_proj,"
                        "gate_proj,up_proj,down_proj; LLaDA q_proj,k_proj,v_proj,attn_out,ff_proj,up_proj,ff_out)")
    t.add_argument("--lora-mask-slots-only", action="store_true",
                   help="idlm with --lora (R-ISD): the adapter's update applies at mask slots only, so clean tokens "
                        "run the base model exactly; the mask token's embedding row does not train")
    t.add_argument("--stride", type=int, default=None, metavar="N",
                   help="idlm: tokens per forward N (one clean token + N - 1 mask slots per block; default 4)")
    t.add_argument("--stride-schedule", default=None, metavar="N:STEP,...",
                   help="idlm: a stride curriculum - stride N from optimizer step STEP (0-based) on, e.g. 2:0,4:200; "
                        "the first starts at step 0; the last is the saved model's stride (instead of --stride)")
    t.add_argument("--clean-weight", default=None, metavar="A|auto",
                   help="idlm: weight a of the clean-token CE in L_mask + a L_clean, or auto = L_mask / L_clean "
                        "(no gradient through the ratio); default as the reference: 0.2 for strides 2-3, auto from 4")
    t.add_argument("--dsl-noise-dim", type=int, default=100, metavar="D",
                   help="dsl: dimension d of the noise embedding E (default 100, as the released checkpoints)")
    t.add_argument("--dsl-seed", type=int, default=42, help="dsl: seed of E's random unit rows (default 42)")
    t.add_argument("--dsl-beta", type=float, default=1.0, help="dsl: the converter's initial beta (default 1.0)")
    t.add_argument("--dsl-train-converter-weight", action="store_true",
                   help="dsl with --lora: train the converter's W (d_model x V+1) too; by default it keeps its "
                        "initialisation (the base's input embedding), and the adapter stays small")
    t.add_argument("--dsl-converter-grad-scale", type=float, default=1.0, metavar="X",
                   help="dsl: multiply the converter's gradients by X (most reference scripts: 25)")
    t.add_argument("--dsl-snr-per-sequence", action="store_true",
                   help="dsl: one log-normal SNR per sequence (the reference's core copy) instead of per token")
    t.add_argument("--arch", choices=ARCHS, default=None, help="architecture of a new model (default llada)")
    t.add_argument("--tokenizer", default=None,
                   help="tokenizer directory of a new model (default: the shipped data/tokenizer)")
    d = ModelSize()
    t.add_argument("--d-model", type=int, default=None, help=f"new model: hidden size (default {d.d_model})")
    t.add_argument("--n-layers", type=int, default=None, help=f"new model: transformer layers (default {d.n_layers})")
    t.add_argument("--n-heads", type=int, default=None,
                   help=f"new model: attention heads, dividing --d-model (default {d.n_heads})")
    t.add_argument("--mlp-hidden", type=int, default=None, help=f"new model: MLP hidden size (default {d.mlp_hidden})")
    t.add_argument("--max-positions", type=int, default=None,
                   help=f"new model: longest sequence it supports, the limit of --seq-len (default {d.max_positions})")
    t.add_argument("--data", default=None, help="dataset directory from `dlm data build` (default: the shipped "
                                                "data/debian)")
    t.add_argument("--seq-len", type=int, default=256,
                   help="tokens per training row (pretrain: packed block; SFT: longest prompt + answer)")
    t.add_argument("--answer-length", type=int, default=32, help="SFT answer block (tokens)")
    t.add_argument("--instruction-dropout", type=float, default=0.0,
                   help="SFT: share of prompts without the instruction line")
    t.add_argument("--batch-size", type=int, default=8, help="rows per process per micro-step")
    t.add_argument("--grad-accum", type=int, default=1, help="micro-steps accumulated per optimizer step")
    t.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (after warm-up)")
    t.add_argument("--warmup-steps", type=int, default=None,
                   help=f"linear warm-up steps, below --max-steps (default: {DEFAULT_WARMUP}, or a tenth of a run "
                        f"shorter than {10 * DEFAULT_WARMUP} steps, with a warning)")
    t.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (not on norms and biases)")
    t.add_argument("--max-steps", type=int, default=1000, help="optimizer steps (the LR schedule ends here)")
    t.add_argument("--max-minutes", type=float, default=None,
                   help="stop after this many minutes with a checkpoint; rerun to continue")
    t.add_argument("--anneal-steps", type=int, default=0, help="a2d: attention-mask annealing steps")
    t.add_argument("--eval-every", type=int, default=100, help="steps between validation losses")
    t.add_argument("--eval-batches", type=int, default=8, help="validation batches per evaluation")
    t.add_argument("--save-every", type=int, default=100, help="steps between checkpoints")
    t.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and noise")
    t.add_argument("--save-dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="dtype of the saved weights")
    t.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no",
                   help="autocast the forward and backward (accelerate); bf16 about doubles CPU throughput "
                        "on CPUs with AMX/AVX512-BF16 but is far slower on CPUs without them (a warning says "
                        "so); the weights and optimizer stay float32")
    t.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations during backward (less memory, slower)")
    t.add_argument("--name", default=None, help="model name for the card (default: the --out folder name)")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bars")
    t.set_defaults(func=cmd_train)


def model_size(args) -> ModelSize:
    """The new model's size from the options given; with --init the new-model options are refused."""
    if args.init is not None:
        given = [f"--{k.replace('_', '-')}" for k in NEW_MODEL_OPTIONS if getattr(args, k) is not None]
        if given:
            raise DLMError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for a new model; "
                           f"--init {args.init} brings its own (drop {'it' if len(given) == 1 else 'them'}, or --init)")
    return ModelSize(**{k: getattr(args, k) for k in SIZE_OPTIONS if getattr(args, k) is not None})


def cmd_train(args) -> int:
    import torch

    from dlm.train.idlm import parse_clean_weight
    from dlm.train.trainer import Trainer, TrainConfig

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(
        out=args.out, objective=args.objective, task=args.task, init=args.init, arch=args.arch or "llada",
        size=model_size(args),
        tokenizer=args.tokenizer, data=args.data, seq_len=args.seq_len,
        answer_length=args.answer_length, instruction_dropout=args.instruction_dropout, batch_size=args.batch_size,
        grad_accum=args.grad_accum, lr=args.lr, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
        max_steps=args.max_steps, max_minutes=args.max_minutes, anneal_steps=args.anneal_steps,
        eval_every=args.eval_every, eval_batches=args.eval_batches, save_every=args.save_every, seed=args.seed,
        save_dtype=args.save_dtype, name=args.name, progress=args.progress,
        gradient_checkpointing=args.gradient_checkpointing, continue_finished=args.continue_finished,
        mixed_precision=args.mixed_precision,
        lora=args.lora, lora_alpha=args.lora_alpha,
        lora_dropout=0.0 if args.lora_dropout is None else args.lora_dropout,
        lora_targets=None if args.lora_targets is None else [t.strip() for t in args.lora_targets.split(",")],
        stride=args.stride, stride_schedule=args.stride_schedule, lora_mask_slots_only=args.lora_mask_slots_only,
        dsl_noise_dim=args.dsl_noise_dim, dsl_seed=args.dsl_seed, dsl_beta=args.dsl_beta,
        dsl_train_converter_weight=args.dsl_train_converter_weight,
        dsl_converter_grad_scale=args.dsl_converter_grad_scale, dsl_per_token_snr=not args.dsl_snr_per_sequence,
        clean_weight=None if args.clean_weight is None else parse_clean_weight(args.clean_weight))
    result = Trainer(cfg).train()
    if not result["main_process"]:
        return 0
    last = next((e for e in reversed(result["log"]) if "val_loss" in e), {})
    print(json.dumps({"out": args.out, "finished": result["finished"], "step": result["step"],
                      "tokens": result["tokens"], "seconds": round(result["seconds"], 1),
                      "val_loss": last.get("val_loss")}))
    return 0
