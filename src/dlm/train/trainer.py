"""``dlm train``: one loop for causal LM, masked-diffusion and AR -> diffusion training, on ``accelerate``.

The same command runs on a laptop CPU or, under ``accelerate launch``, on several processes
(gloo on CPU, NCCL on GPUs, or DeepSpeed / FSDP as configured in accelerate). Each optimizer
step draws a global batch of ``batch_size x processes x grad_accum`` rows from a seeded
shuffle; a checkpoint (``out/checkpoint``: model, optimizer, RNG and step) is written every
``save_every`` steps and when the ``max_minutes`` budget runs out, and a rerun of the same
command resumes from it. The final model is an HF-format directory with a model card.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dlm.errors import DLMError, first_line
from dlm.provenance import cpu_model, software_versions
from dlm.train.build import ModelSize, load_for_training, new_model
from dlm.train.data import BatchStream, collate_sft, pack_documents, pretraining_text, sft_examples
from dlm.train.objectives import OBJECTIVES, anneal_ratio, causal_lm_loss, diffusion_loss


@dataclass
class TrainConfig:
    out: str
    objective: str = "mdm"  # causal | mdm | a2d
    task: str = "pretrain"  # pretrain (packed text) | sft (summarisation pairs)
    init: str | None = None  # checkpoint dir to start from; None = a new model of `arch` and `size`
    arch: str = "llada"
    size: ModelSize = field(default_factory=ModelSize)
    tokenizer: str | None = None  # for a new model
    data: str = "data/debian"
    seq_len: int = 256
    answer_length: int = 32  # SFT answer block (synopsis + EOS fill)
    instruction_dropout: float = 0.0
    batch_size: int = 8  # per process and micro-step
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    max_steps: int = 1000
    max_minutes: float | None = None
    anneal_steps: int = 0  # a2d: steps of attention-mask annealing (causal -> full)
    eval_every: int = 100
    eval_batches: int = 8
    save_every: int = 100
    seed: int = 0
    save_dtype: str = "float32"
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    name: str | None = None  # model name for the card
    progress: bool = True

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise DLMError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.task not in ("pretrain", "sft"):
            raise DLMError(f"--task must be pretrain or sft, got {self.task!r}")
        if self.objective == "a2d" and self.task == "sft":
            raise DLMError("a2d adapts on pretraining text; fine-tune the adapted model with --objective mdm --task sft")
        if self.objective == "a2d" and self.init is None:
            raise DLMError("a2d adapts an autoregressive model: pass --init DIR of a causal LM (e.g. tiny-ar)")
        for name in ("seq_len", "batch_size", "grad_accum", "max_steps", "eval_every", "save_every", "eval_batches",
                     "answer_length"):
            if getattr(self, name) < 1:
                raise DLMError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise DLMError(f"--lr must be a positive number, got {self.lr}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise DLMError(f"--max-minutes must be positive, got {self.max_minutes}")
        if self.save_dtype not in ("float32", "bfloat16", "float16"):
            raise DLMError(f"--save-dtype must be float32, bfloat16 or float16, got {self.save_dtype!r}")
        if self.init is None and self.tokenizer is None:
            raise DLMError("a new model needs --tokenizer DIR (or start from --init DIR)")
        if not 0.0 <= self.instruction_dropout <= 1.0:
            raise DLMError(f"--instruction-dropout must be in [0, 1], got {self.instruction_dropout}")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class Trainer:
    def __init__(self, cfg: TrainConfig):
        from accelerate import Accelerator

        cfg.validate()
        self.cfg = cfg
        # With no GPU, run on CPU explicitly: under torchrun (`accelerate launch --multi_gpu`) this
        # makes accelerate use gloo across processes instead of treating each as a lone run.
        has_gpu = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
        self.acc = Accelerator(cpu=not has_gpu)
        self.out = Path(cfg.out)
        self.ckpt = self.out / "checkpoint"
        if cfg.init is not None:
            self.model = load_for_training(cfg.init, cfg.objective)
        else:
            from transformers import AutoTokenizer

            if not Path(cfg.tokenizer).is_dir():
                raise DLMError(f"tokenizer directory {cfg.tokenizer} does not exist; build it with `dlm data tokenizer`")
            try:
                tok = AutoTokenizer.from_pretrained(cfg.tokenizer, local_files_only=True, trust_remote_code=False)
            except (OSError, ValueError) as e:
                raise DLMError(f"cannot load the tokenizer at {cfg.tokenizer} ({first_line(e)}); "
                               "build it with `dlm data tokenizer`") from None
            self.model = new_model(cfg.arch, cfg.size, tok, seed=cfg.seed, objective=cfg.objective)
        self.model.train()
        if cfg.gradient_checkpointing:
            if self.model.is_llada:
                self.model.net.gradient_checkpointing = True
            else:  # transformers 5 renamed gradient_checkpointing_enable
                enable = getattr(self.model.net, "activation_checkpointing_enable", None)
                (enable or self.model.net.gradient_checkpointing_enable)()
        # Noise (mask ratios, masks, annealed attention) comes from the global RNG: seeded per run
        # and per rank, so processes draw different noise; checkpoints save and restore it.
        torch.manual_seed(cfg.seed * 1000 + self.acc.process_index)
        self.tokenizer = self.model.tokenizer
        if self.tokenizer is None:
            raise DLMError("training needs a tokenizer saved with the model")
        self.facts = self.model.facts
        self.train_data, self.val_data, self.data_stats = self._load_data()
        world = self.acc.num_processes
        self.stream = BatchStream(len(self.train_data), cfg.batch_size * cfg.grad_accum, cfg.seed,
                                  self.acc.process_index, world)
        trainable = self.model.net if cfg.objective == "causal" else self.model
        decay = [p for n, p in trainable.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in trainable.named_parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
        self.trainable, self.opt = self.acc.prepare(trainable, opt)
        self.state = {"step": 0, "tokens": 0, "seconds": 0.0, "log": []}

    # -- data -----------------------------------------------------------------------------------
    def _load_data(self):
        from dlm.data.debian import load_split

        cfg = self.cfg
        train, val = load_split(cfg.data, "train"), load_split(cfg.data, "validation")
        if cfg.task == "pretrain":
            tr, tr_stats = pack_documents(self.tokenizer, [pretraining_text(r) for r in train], cfg.seq_len)
            va, va_stats = pack_documents(self.tokenizer, [pretraining_text(r) for r in val], cfg.seq_len)
            return tr, va, {"train": tr_stats, "validation": va_stats}
        diffusion = cfg.objective != "causal"
        tr, tr_stats = sft_examples(self.tokenizer, train, cfg.seq_len, cfg.answer_length, diffusion,
                                    cfg.instruction_dropout, cfg.seed)
        va, va_stats = sft_examples(self.tokenizer, val, cfg.seq_len, cfg.answer_length, diffusion, 0.0, cfg.seed)
        return tr, va, {"train": tr_stats, "validation": va_stats}

    def _batch(self, data, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.cfg.task == "pretrain":
            ids = data[idx]
            batch = {"input_ids": ids, "labels": ids}
        else:
            pad = self.facts.pad_id if self.facts.pad_id is not None else self.facts.eos_ids[0]
            batch = collate_sft([data[int(i)] for i in idx], pad)
            if self.cfg.objective == "causal":
                batch.pop("prompt_lengths")
        return {k: v.to(self.acc.device) for k, v in batch.items()}

    # -- loss -----------------------------------------------------------------------------------
    def _loss(self, batch, step: int, generator=None, objective: str | None = None) -> torch.Tensor:
        cfg = self.cfg
        objective = objective or cfg.objective
        if objective == "causal":
            return causal_lm_loss(self.trainable, batch)
        return diffusion_loss(self.trainable, batch, mask_id=self.facts.mask_id, shifted=self.facts.shifted,
                              objective=objective, step=step, anneal_steps=cfg.anneal_steps, generator=generator)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the first ``eval_batches`` validation batches with fixed noise (seed 1234):
        the causal CE, or for every diffusion objective (a2d included) the same per-token
        masked-diffusion ELBO with full attention, in nats - comparable across models."""
        cfg = self.cfg
        self.trainable.eval()
        g = torch.Generator(device=self.acc.device).manual_seed(1234)
        n = len(self.val_data)
        losses = []
        for b in range(cfg.eval_batches):
            idx = torch.arange(b * cfg.batch_size, min((b + 1) * cfg.batch_size, n))
            if len(idx) == 0:
                break
            objective = "causal" if cfg.objective == "causal" else "mdm"
            losses.append(float(self._loss(self._batch(self.val_data, idx), step=0, generator=g, objective=objective)))
        self.trainable.train()
        return sum(losses) / max(1, len(losses))

    # -- checkpoints ----------------------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        self.acc.wait_for_everyone()
        tmp = self.out / "checkpoint.tmp"
        # accelerate warns about tied weights (embedding = head) on every save; they reload fine.
        quiet = logging.getLogger("accelerate.utils.other")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            self.acc.save_state(str(tmp))
        finally:
            quiet.setLevel(level)
        self.acc.wait_for_everyone()  # every rank's RNG state is in tmp before it is renamed
        if self.acc.is_main_process:
            (tmp / "dlm_state.json").write_text(json.dumps({**self.state, "config": _jsonable(self.cfg),
                                                            "processes": self.acc.num_processes}, indent=1))
            if self.ckpt.exists():
                shutil.rmtree(self.ckpt)
            tmp.rename(self.ckpt)
        self.acc.wait_for_everyone()

    def _maybe_resume(self) -> None:
        state_file = self.ckpt / "dlm_state.json"
        if not state_file.exists():
            return
        saved = json.loads(state_file.read_text())
        if saved["config"] != _jsonable(self.cfg):
            diff = sorted(k for k in saved["config"] if saved["config"][k] != _jsonable(self.cfg).get(k))
            raise DLMError(f"{self.ckpt} was written with different settings ({', '.join(diff)}); "
                           "use another --out or delete the checkpoint")
        if saved.get("processes", 1) != self.acc.num_processes:
            raise DLMError(f"{self.ckpt} was written by {saved.get('processes', 1)} process(es), this run has "
                           f"{self.acc.num_processes}; resume with the same number (data sharding and RNG depend on it)")
        self.acc.load_state(str(self.ckpt))
        self.state = {k: saved[k] for k in ("step", "tokens", "seconds", "log")}
        self.acc.print(f"dlm train: resuming {self.out} at step {self.state['step']}")

    # -- loop -----------------------------------------------------------------------------------
    def train(self) -> dict:
        from tqdm.auto import tqdm

        cfg = self.cfg
        self._maybe_resume()
        start_step = self.state["step"]
        t0, seconds0 = time.perf_counter(), self.state["seconds"]
        bar = tqdm(total=cfg.max_steps, initial=start_step, desc=f"dlm train {cfg.objective}/{cfg.task}",
                   unit="step", file=sys.stderr, disable=not (cfg.progress and self.acc.is_main_process),
                   dynamic_ncols=True)
        stopped_by_budget = False
        step = start_step
        while step < cfg.max_steps:
            for group in self.opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            idx = self.stream.indices(step)
            loss_sum = 0.0
            for micro in range(cfg.grad_accum):
                part = idx[micro * cfg.batch_size:(micro + 1) * cfg.batch_size]
                batch = self._batch(self.train_data, part)
                sync = contextlib.nullcontext() if micro == cfg.grad_accum - 1 else self.acc.no_sync(self.trainable)
                with sync:
                    loss = self._loss(batch, step) / cfg.grad_accum
                    self.acc.backward(loss)
                loss_sum += float(loss.detach())
                tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
                self.state["tokens"] += tokens * self.acc.num_processes
            if cfg.grad_clip:
                self.acc.clip_grad_norm_(self.trainable.parameters(), cfg.grad_clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            step += 1
            self.state["step"] = step
            self.state["seconds"] = seconds0 + time.perf_counter() - t0
            entry = {"step": step, "loss": round(loss_sum, 4), "lr": lr_at(step - 1, cfg), "tokens": self.state["tokens"],
                     "seconds": round(self.state["seconds"], 1)}
            if cfg.objective == "a2d":
                entry["attention_ratio"] = anneal_ratio(step - 1, cfg.anneal_steps)
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                entry["val_loss"] = round(self.evaluate(), 4)
            self.state["log"].append(entry)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.3f}", val=entry.get("val_loss", ""),
                            tok_s=f"{(self.state['tokens']) / max(self.state['seconds'], 1e-9):.0f}")
            out_of_time = cfg.max_minutes is not None and (time.perf_counter() - t0) / 60 >= cfg.max_minutes
            if self.acc.num_processes > 1:  # every rank must stop at the same step
                flag = torch.tensor([int(out_of_time)], device=self.acc.device)
                out_of_time = bool(self.acc.gather(flag).max())
            if step % cfg.save_every == 0 or out_of_time:
                self._save_checkpoint()
            if out_of_time and step < cfg.max_steps:
                stopped_by_budget = True
                break
        bar.close()
        if stopped_by_budget:
            self.acc.print(f"dlm train: --max-minutes {cfg.max_minutes} reached at step {step}/{cfg.max_steps}; "
                           f"checkpoint in {self.ckpt}. Run the same command again to continue.")
            return {"finished": False, "main_process": self.acc.is_main_process, **self.state}
        self._finish()
        return {"finished": True, "main_process": self.acc.is_main_process, **self.state}

    def _finish(self) -> None:
        from dlm.train.model_card import write_model_card

        self.acc.wait_for_everyone()
        if not self.acc.is_main_process:
            return
        from dlm.models.loading import save_pretrained

        self.model.config["dlm_training"] = {
            "objective": self.cfg.objective, "task": self.cfg.task, "steps": self.state["step"],
            "tokens": self.state["tokens"], "seconds": round(self.state["seconds"], 1), "init": self.cfg.init,
            "final_val_loss": next((e["val_loss"] for e in reversed(self.state["log"]) if "val_loss" in e), None),
        }
        if self.cfg.task == "sft":
            self.model.config["dlm_generation"] = {"gen_length": self.cfg.answer_length}
        self.model.path = None
        save_pretrained(self.model, self.out, dtype=getattr(torch, self.cfg.save_dtype))
        run = {"config": _jsonable(self.cfg), "data": self.data_stats, "processes": self.acc.num_processes,
               "hardware": _hardware(), "versions": software_versions(), **self.state}
        (self.out / "training_log.json").write_text(json.dumps(run, indent=1) + "\n")
        write_model_card(self.out, run, self.model)
        if self.ckpt.exists():
            shutil.rmtree(self.ckpt)


def _jsonable(cfg: TrainConfig) -> dict:
    d = asdict(cfg)
    d.pop("progress", None)
    d.pop("max_minutes", None)  # a budget, not a setting: a resumed run may have another
    return d


def _hardware() -> dict:
    info = {"platform": platform.platform(), "processor": cpu_model(),
            "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info

