"""``dlm train``: argument parsing for :class:`dlm.train.trainer.Trainer`."""

from __future__ import annotations

import argparse
import json

from dlm.train.build import ARCHS, ModelSize
from dlm.train.objectives import OBJECTIVES


def add_parser(sub) -> None:
    t = sub.add_parser(
        "train", help="train or adapt a model (causal LM, masked diffusion, AR -> diffusion, SFT)",
        description="Train on the Debian corpus. Runs on CPU as is; `accelerate launch dlm train ...` "
                    "(or `accelerate launch -m dlm.cli train ...`) scales it to several processes/GPUs. "
                    "Rerunning the same command resumes from OUT/checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--out", required=True, help="output directory (model, card, checkpoint)")
    t.add_argument("--objective", choices=OBJECTIVES, default="mdm",
                   help="causal: next-token LM; mdm: masked-diffusion ELBO; a2d: AR -> diffusion adaptation")
    t.add_argument("--task", choices=["pretrain", "sft"], default="pretrain",
                   help="pretrain on packed text, or SFT on (description -> synopsis) pairs")
    t.add_argument("--init", default=None, help="start from this model directory (default: a new model)")
    t.add_argument("--arch", choices=ARCHS, default="llada", help="architecture of a new model")
    t.add_argument("--tokenizer", default="data/tokenizer", help="tokenizer directory for a new model")
    d = ModelSize()
    t.add_argument("--d-model", type=int, default=d.d_model)
    t.add_argument("--n-layers", type=int, default=d.n_layers)
    t.add_argument("--n-heads", type=int, default=d.n_heads)
    t.add_argument("--mlp-hidden", type=int, default=d.mlp_hidden)
    t.add_argument("--data", default="data/debian", help="dataset directory (dlm data build)")
    t.add_argument("--seq-len", type=int, default=256)
    t.add_argument("--answer-length", type=int, default=32, help="SFT answer block (tokens)")
    t.add_argument("--instruction-dropout", type=float, default=0.0,
                   help="SFT: share of prompts without the instruction line")
    t.add_argument("--batch-size", type=int, default=8, help="rows per process per micro-step")
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--warmup-steps", type=int, default=100)
    t.add_argument("--weight-decay", type=float, default=0.1)
    t.add_argument("--max-steps", type=int, default=1000, help="optimizer steps (the LR schedule ends here)")
    t.add_argument("--max-minutes", type=float, default=None,
                   help="stop after this many minutes with a checkpoint; rerun to continue")
    t.add_argument("--anneal-steps", type=int, default=0, help="a2d: attention-mask annealing steps")
    t.add_argument("--eval-every", type=int, default=100)
    t.add_argument("--eval-batches", type=int, default=8)
    t.add_argument("--save-every", type=int, default=100)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--save-dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    t.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations during backward (less memory, slower)")
    t.add_argument("--name", default=None, help="model name for the card (default: the --out folder name)")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--no-progress", dest="progress", action="store_false")
    t.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    import torch

    from dlm.train.trainer import Trainer, TrainConfig

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    size = ModelSize(d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads, mlp_hidden=args.mlp_hidden)
    cfg = TrainConfig(
        out=args.out, objective=args.objective, task=args.task, init=args.init, arch=args.arch, size=size,
        tokenizer=args.tokenizer if args.init is None else None, data=args.data, seq_len=args.seq_len,
        answer_length=args.answer_length, instruction_dropout=args.instruction_dropout, batch_size=args.batch_size,
        grad_accum=args.grad_accum, lr=args.lr, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
        max_steps=args.max_steps, max_minutes=args.max_minutes, anneal_steps=args.anneal_steps,
        eval_every=args.eval_every, eval_batches=args.eval_batches, save_every=args.save_every, seed=args.seed,
        save_dtype=args.save_dtype, name=args.name, progress=args.progress,
        gradient_checkpointing=args.gradient_checkpointing)
    result = Trainer(cfg).train()
    if not result["main_process"]:
        return 0
    last = next((e for e in reversed(result["log"]) if "val_loss" in e), {})
    print(json.dumps({"out": args.out, "finished": result["finished"], "step": result["step"],
                      "tokens": result["tokens"], "seconds": round(result["seconds"], 1),
                      "val_loss": last.get("val_loss")}))
    return 0
