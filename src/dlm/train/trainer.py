"""``dlm train``: one loop for causal LM, masked-diffusion and AR -> diffusion training, on ``accelerate``.

The same command runs on a laptop CPU or, under ``accelerate launch``, on several processes
(gloo on CPU, NCCL on GPUs, or DeepSpeed / FSDP as configured in accelerate). Each optimizer
step draws a global batch of ``batch_size x processes x grad_accum`` rows from a seeded
shuffle; a checkpoint (``out/checkpoint``: model, optimizer, RNG and step) is written every
``save_every`` steps, when the ``max_minutes`` budget runs out and on Ctrl-C, and a rerun of the
same command resumes from it. The final model is an HF-format directory with a model card; the
same command run again on a finished ``out`` does nothing (see :mod:`dlm.train.runs`).
Tokenised data is cached between runs (:mod:`dlm.train.cache`).
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import torch

from dlm.errors import DLMError, first_line
from dlm.models.registry import CAUSAL_OBJECTIVES
from dlm.resources import cpu_has_bf16
from dlm.train.build import check_training_length, load_for_training, new_model
from dlm.train.config import DEFAULT_WARMUP, TrainConfig, lr_at, settings_json, warmup_steps
from dlm.train.data import BatchStream
from dlm.train.dsl import DSLObjective
from dlm.train.idlm import IDLMObjective
from dlm.train.scope import ScopeObjective
from dlm.train.lora import LoraRun
from dlm.train.objectives import anneal_ratio
from dlm.train.chat import sft_chat_template
from dlm.train.checkpointing import Checkpointing, rng_state
from dlm.train.evaluation import Evaluation
from dlm.train.finishing import Finishing
from dlm.train.run_data import RunData
from dlm.train.runs import plan_run

class Trainer(Checkpointing, RunData, Evaluation, Finishing):
    def __init__(self, cfg: TrainConfig):
        from accelerate import Accelerator

        cfg.validate()
        self.cfg = cfg = cfg.resolved()
        self.out = Path(cfg.out).expanduser()
        self.ckpt = self.out / "checkpoint"
        # With no GPU, run on CPU explicitly: under torchrun (`accelerate launch --multi_gpu`) this
        # makes accelerate use gloo across processes instead of treating each as a lone run.
        has_gpu = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
        try:
            self.acc = Accelerator(cpu=not has_gpu, mixed_precision=cfg.mixed_precision)
        except ValueError as e:  # accelerate fixes the precision once per process
            if "already been initialized" not in str(e):
                raise
            raise DLMError(f"--mixed-precision {cfg.mixed_precision}: this Python process already trained with "
                           "another precision, and accelerate fixes it once per process; run in a new process") from None
        if cfg.mixed_precision == "bf16" and self.acc.device.type == "cpu" and cpu_has_bf16() is False:
            self._say("dlm train: warning: this CPU has no bf16 instructions (AMX-BF16 / AVX512-BF16), so "
                      "--mixed-precision bf16 runs far slower than float32 here (a bf16 matmul measured 64x slower)")
        # Refuse a --out that holds something else (or a finished run with other settings) before any
        # work. The main process goes first: it completes a checkpoint swap cut short and creates --out.
        with self.acc.main_process_first():
            self.plan = plan_run(self.out, settings_json(cfg), cfg.continue_finished, self.acc.is_main_process)
        if self.plan.kind == "finished":
            return
        if self.plan.kind == "resume" and self.plan.saved.get("processes", 1) != self.acc.num_processes:
            raise DLMError(f"{self.ckpt} was written by {self.plan.saved.get('processes', 1)} process(es), this run "
                           f"has {self.acc.num_processes}; resume with the same number (data sharding and RNG depend "
                           "on it)")
        self.state = {"step": 0, "tokens": 0, "seconds": 0.0, "log": [], "phase_start": 0, "previous": None}
        if self.plan.kind == "continue":
            prev = self.plan.saved
            self.state = {**{k: prev[k] for k in ("step", "tokens", "seconds", "log")}, "phase_start": prev["step"],
                          "previous": {k: v for k, v in prev.items() if k != "log"}}
        start = self.state["phase_start"] if self.plan.kind != "resume" else self.plan.saved.get("phase_start", 0)
        self.warmup = self._check_warmup(start)
        self.lora = LoraRun(cfg) if cfg.lora is not None else None
        self.model = self._build_model()
        self.model.train()
        if cfg.gradient_checkpointing:
            if self.model.is_llada:
                self.model.net.gradient_checkpointing = True
            else:  # transformers 5 renamed gradient_checkpointing_enable
                enable = getattr(self.model.net, "activation_checkpointing_enable", None)
                (enable or self.model.net.gradient_checkpointing_enable)()
        if self.lora is not None:  # the base's layers get their adapters (the trained ones to continue a run)
            self.lora.apply(self.model, self.out if self.plan.kind == "continue" else None)
        self.dsl = DSLObjective(cfg) if cfg.objective == "dsl" else None
        if self.dsl is not None:  # noise embedding + converter attached, head and E frozen
            trained = self.out if self.lora is not None and self.plan.kind == "continue" else None
            self.dsl.prepare(self.model, lora=self.lora is not None, trained=trained)
        memory = check_training_length(self.model, cfg.seq_len, cfg.batch_size, cfg.gradient_checkpointing,
                                       self.acc.device, new=cfg.init is None and self.plan.kind != "continue")
        # Noise (mask ratios, masks, annealed attention) comes from the global RNG: seeded per run
        # and per rank, so processes draw different noise; checkpoints save and restore it.
        torch.manual_seed(cfg.seed * 1000 + self.acc.process_index)
        self.tokenizer = self.model.tokenizer
        if self.tokenizer is None:
            raise DLMError("training needs a tokenizer saved with the model")
        # a pretraining run keeps the template of the model it started from (none from scratch)
        self.init_chat_template = getattr(self.tokenizer, "chat_template", None) if cfg.init is not None else None
        if cfg.is_sft:
            self.tokenizer.chat_template, note = sft_chat_template(self.tokenizer, cfg.init)
            if note:
                self._say(note)
        self.facts = self.model.facts
        self.idlm = IDLMObjective(cfg, self.facts.mask_id) if cfg.objective == "idlm" else None
        self.scope = ScopeObjective(self.facts.mask_id) if cfg.objective == "scope" else None
        self.train_data, self.val_data, self.data_stats = self._load_data()
        world = self.acc.num_processes
        self.stream = BatchStream(len(self.train_data), cfg.batch_size * cfg.grad_accum, cfg.seed,
                                  self.acc.process_index, world)
        trainable = self.model.net if cfg.objective in CAUSAL_OBJECTIVES else self.model  # idlm: dlm.train.idlm
        params = [p for p in trainable.parameters() if p.requires_grad]  # all, or LoRA's
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
        self.trainable, self.opt = self.acc.prepare(trainable, opt)
        if self.lora is not None:
            self.lora.register(self.acc)
        self._say(memory)  # once the data is there too: the run starts

    def _say(self, message: str) -> None:
        """A note for the user on stderr (stdout carries the result), once per run."""
        if self.acc.is_main_process:
            print(message, file=sys.stderr, flush=True)

    def _check_warmup(self, start: int) -> int:
        cfg, steps = self.cfg, self.cfg.max_steps - start
        warmup = warmup_steps(cfg, start)
        if cfg.warmup_steps is not None and warmup >= steps:
            raise DLMError(f"--warmup-steps {warmup} must be below the {steps} steps this run trains "
                           f"(--max-steps {cfg.max_steps} - finished step {start})")
        if cfg.warmup_steps is None and warmup != DEFAULT_WARMUP:
            self._say(f"dlm train: warning: a {steps}-step run warms up over {warmup} step(s), not the default "
                      f"{DEFAULT_WARMUP}; pass --warmup-steps N to choose")
        if self.plan.kind == "continue":
            self._say(f"dlm train: continuing the finished run in {self.out} from step {start} to {cfg.max_steps}: "
                      f"its weights, a new AdamW state (a finished run keeps none) and a new learning-rate schedule "
                      f"({warmup} warm-up steps, cosine decay to step {cfg.max_steps})")
        return warmup

    def _build_model(self):
        cfg = self.cfg
        if self.lora is not None:
            return self.lora.load_base()
        if self.plan.kind == "continue" or (self.plan.kind == "resume" and self.plan.saved.get("previous")):
            return load_for_training(self.out, cfg.objective)  # the finished model this run trains further
        if cfg.init is not None:
            return load_for_training(cfg.init, cfg.objective)
        from transformers import AutoTokenizer

        tok_dir = cfg.tokenizer_dir()
        if not tok_dir.is_dir():
            raise DLMError(f"tokenizer directory {tok_dir} does not exist; build it with `dlm data tokenizer`")
        try:
            tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise DLMError(f"cannot load the tokenizer at {tok_dir} ({first_line(e)}); "
                           "build it with `dlm data tokenizer`") from None
        return new_model(cfg.arch, cfg.size, tok, seed=cfg.seed, objective=cfg.objective)

    # -- loop -----------------------------------------------------------------------------------
    def train(self) -> dict:
        from tqdm.auto import tqdm

        if self.plan.kind == "finished":
            return self._already_finished()
        cfg = self.cfg
        if self.plan.kind == "resume":
            self._resume()
        self._saved_step = self.state["step"] if self.plan.kind == "resume" else None
        self._updating = False
        bar = tqdm(total=cfg.max_steps, initial=self.state["step"], desc=f"dlm train {cfg.objective}/{cfg.task}",
                   unit="step", file=sys.stderr, disable=not (cfg.progress and self.acc.is_main_process),
                   dynamic_ncols=True)
        try:
            with self._stop_on_ctrl_c():
                stopped = self._loop(bar)
        except KeyboardInterrupt:
            bar.close()
            self._interrupted()
            raise
        bar.close()
        if stopped == "interrupt":
            self._say(self._resume_hint("interrupted"))
            raise KeyboardInterrupt
        if stopped == "budget":
            self._say(self._resume_hint(f"--max-minutes {cfg.max_minutes} reached"))
            return {"finished": False, "main_process": self.acc.is_main_process, **self.state}
        self._finish()
        return {"finished": True, "main_process": self.acc.is_main_process, **self.state}

    def _loop(self, bar) -> str:
        """Train to ``max_steps``; returns why it stopped: done, budget (--max-minutes) or interrupt."""
        cfg = self.cfg
        start = self.state["phase_start"]
        step = self.state["step"]
        t0, seconds0 = time.perf_counter(), self.state["seconds"]
        self._boundary_rng = rng_state()
        while step < cfg.max_steps:
            for group in self.opt.param_groups:
                group["lr"] = lr_at(step, cfg, start)
            idx = self.stream.indices(step)
            loss_sum, tokens = 0.0, 0
            for micro in range(cfg.grad_accum):
                part = idx[micro * cfg.batch_size:(micro + 1) * cfg.batch_size]
                batch = self._batch(self.train_data, part)
                sync = contextlib.nullcontext() if micro == cfg.grad_accum - 1 else self.acc.no_sync(self.trainable)
                with sync:
                    loss = self._loss(batch, step) / cfg.grad_accum
                    self.acc.backward(loss)
                loss_sum += float(loss.detach())
                n = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
                tokens += n * self.acc.num_processes
            if cfg.grad_clip:
                self.acc.clip_grad_norm_(self.trainable.parameters(), cfg.grad_clip)
            self._updating = True  # until the step is booked, a Ctrl-C would leave a half-updated state
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            step += 1
            self.state["step"] = step
            self.state["tokens"] += tokens
            self.state["seconds"] = seconds0 + time.perf_counter() - t0
            entry = {"step": step, "loss": round(loss_sum, 4), "lr": lr_at(step - 1, cfg, start),
                     "tokens": self.state["tokens"], "seconds": round(self.state["seconds"], 1)}
            if cfg.objective == "a2d":
                entry["attention_ratio"] = anneal_ratio(step - 1, cfg.anneal_steps)
            if self.idlm is not None:
                entry.update(self.idlm.log(step=step - 1))
            if self.scope is not None:
                entry.update(self.scope.log())
            self.state["log"].append(entry)
            self._boundary_rng = rng_state()
            self._updating = False
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                entry["val_loss"] = round(self.evaluate(), 4)
                entry.update(self.idlm.log("val_") if self.idlm is not None else {})
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.3f}", val=entry.get("val_loss", ""),
                            tok_s=f"{(self.state['tokens']) / max(self.state['seconds'], 1e-9):.0f}")
            if bar.disable and (step % cfg.save_every == 0 or "val_loss" in entry):
                self._say(_log_line(entry, cfg.max_steps))  # no progress bar (a log file): a line now and then
            out_of_time = cfg.max_minutes is not None and (time.perf_counter() - t0) / 60 >= cfg.max_minutes
            stop = self._stop_requested and step < cfg.max_steps
            if self.acc.num_processes > 1:  # every rank must stop at the same step
                flags = torch.tensor([int(out_of_time), int(stop)], device=self.acc.device)
                out_of_time, stop = (bool(f) for f in self.acc.gather(flags).view(-1, 2).max(0).values)
            if step % cfg.save_every == 0 or out_of_time or stop:
                self._save_checkpoint()
            if stop:
                return "interrupt"
            if out_of_time and step < cfg.max_steps:
                return "budget"
        return "done"


def _log_line(entry: dict, max_steps: int) -> str:
    """One step of the training log as a line for a log file."""
    rate = entry["tokens"] / max(entry["seconds"], 1e-9)
    val = f" val_loss {entry['val_loss']:.4f}" if "val_loss" in entry else ""
    return (f"dlm train: step {entry['step']}/{max_steps} loss {entry['loss']:.4f}{val} lr {entry['lr']:.2e} "
            f"tokens {entry['tokens']:,} ({rate:.0f}/s) {entry['seconds'] / 60:.1f} min")

