"""``dlm train``'s settings: :class:`TrainConfig`, its checks, and the learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from dlm.errors import DLMError
from dlm.train.build import ModelSize
from dlm.train.idlm import DEFAULT_STRIDE, parse_clean_weight, stride_phases
from dlm.train.objectives import OBJECTIVES

DEFAULT_WARMUP = 100  # steps; runs shorter than 10 x this warm up over a tenth of their steps


@dataclass
class TrainConfig:
    out: str
    objective: str = "mdm"  # causal | mdm | a2d | idlm | dsl
    task: str = "pretrain"  # pretrain (packed text) | sft (summarisation pairs)
    init: str | None = None  # checkpoint dir to start from; None = a new model of `arch` and `size`
    arch: str = "llada"
    size: ModelSize = field(default_factory=ModelSize)
    tokenizer: str | None = None  # for a new model; None = the shipped data/tokenizer
    data: str | None = None  # None = the shipped data/debian
    seq_len: int = 256
    answer_length: int = 32  # SFT answer block (synopsis + EOS fill)
    instruction_dropout: float = 0.0
    batch_size: int = 8  # per process and micro-step
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int | None = None  # None = DEFAULT_WARMUP, or a tenth of a shorter run (see warmup_steps())
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
    continue_finished: bool = False  # train a finished run in `out` further (its weights, a new optimizer)
    mixed_precision: str = "no"  # no | bf16 | fp16: accelerate's autocast (bf16 doubles CPU throughput with AMX)
    lora: int | None = None  # LoRA rank: train an adapter on `init` (dlm.train.lora); None = all weights
    lora_alpha: float | None = None  # None = 2 x rank
    lora_dropout: float = 0.0
    lora_targets: list[str] | None = None  # layer names in the transformer blocks; None = the architecture's
    stride: int | None = None  # idlm: N tokens per forward (N - 1 mask slots per block); None = 4 (dlm.train.idlm)
    stride_schedule: str | None = None  # idlm: "N:STEP,N:STEP" - stride N from optimizer step STEP on
    clean_weight: float | str | None = None  # idlm: weight of L_clean or "auto"; None = 0.2 for N <= 3, else auto
    lora_mask_slots_only: bool = False  # idlm with --lora: the adapter acts at mask slots only (R-ISD)
    dsl_noise_dim: int = 100  # dsl: d of the noise embedding E (dlm.train.dsl)
    dsl_seed: int = 42  # dsl: seed of E (and of the converter's bias c)
    dsl_beta: float = 1.0  # dsl: the converter's initial beta (the released Beta1: 1.0)
    dsl_train_converter_weight: bool = False  # dsl with --lora: train W too (saved: (d_model, V + 1) floats)
    dsl_converter_grad_scale: float = 1.0  # dsl: multiply the converter's gradients (reference scripts: 25)
    dsl_per_token_snr: bool = True  # dsl: log-normal SNR per token (False: one per sequence, the core copy)

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise DLMError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.task not in ("pretrain", "sft", "arith"):
            raise DLMError(f"--task must be pretrain, sft or arith, got {self.task!r}")
        if self.task == "arith" and self.data is not None:
            raise DLMError("--task arith generates its problems (dlm.data.arith); it takes no --data")
        if self.task == "arith" and self.instruction_dropout:
            raise DLMError("--instruction-dropout is for --task sft (the summaries); arith prompts keep their instruction")
        if self.objective == "scope" and self.init is None:
            raise DLMError("--objective scope post-trains a masked diffusion model: pass --init MODEL "
                           "(e.g. smol-a2d-instruct)")
        if self.objective == "a2d" and self.is_sft:
            raise DLMError("a2d adapts on pretraining text; fine-tune the adapted model with --objective mdm --task sft")
        if self.objective == "a2d" and self.init is None:
            raise DLMError("a2d adapts an autoregressive model: pass --init DIR of a causal LM (e.g. tiny-ar)")
        for name in ("seq_len", "batch_size", "grad_accum", "max_steps", "eval_every", "save_every", "eval_batches",
                     "answer_length"):
            if getattr(self, name) < 1:
                raise DLMError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.init is None:
            for name, value in asdict(self.size).items():
                if name != "rope_theta" and value < 1:
                    raise DLMError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        elif self.tokenizer is not None:
            raise DLMError("--tokenizer is for a new model; --init DIR trains with the tokenizer saved in DIR")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise DLMError(f"--lr must be a positive number, got {self.lr}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise DLMError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if self.warmup_steps is not None and self.warmup_steps >= self.max_steps:
            raise DLMError(f"--warmup-steps {self.warmup_steps} must be below --max-steps {self.max_steps}, "
                           "or the learning rate never reaches --lr")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise DLMError(f"--max-minutes must be positive, got {self.max_minutes}")
        if self.save_dtype not in ("float32", "bfloat16", "float16"):
            raise DLMError(f"--save-dtype must be float32, bfloat16 or float16, got {self.save_dtype!r}")
        if not 0.0 <= self.instruction_dropout <= 1.0:
            raise DLMError(f"--instruction-dropout must be in [0, 1], got {self.instruction_dropout}")
        if self.objective in ("causal", "idlm") and self.init is None and self.arch == "llada":
            raise DLMError(f"--objective {self.objective} trains a causal LM: pass --arch llama (LLaDA is bidirectional)")
        if self.is_sft and self.answer_length >= self.seq_len:
            raise DLMError(f"--answer-length {self.answer_length} leaves no room for the prompt in "
                           f"--seq-len {self.seq_len}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise DLMError(f"--mixed-precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        self._validate_lora()
        self._validate_idlm()
        self._validate_dsl()

    def _validate_dsl(self) -> None:
        defaults = {"dsl_noise_dim": 100, "dsl_seed": 42, "dsl_beta": 1.0, "dsl_train_converter_weight": False,
                    "dsl_converter_grad_scale": 1.0, "dsl_per_token_snr": True}
        given = [f"--{k.replace('_', '-')}" for k, unset in defaults.items() if getattr(self, k) != unset]
        if self.objective != "dsl":
            if given:
                raise DLMError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for --objective dsl")
            return
        if self.init is None:
            raise DLMError("--objective dsl adapts a masked diffusion model: pass --init MODEL (e.g. smol-a2d-instruct)")
        if not 1 <= self.dsl_noise_dim <= 4096:
            raise DLMError(f"--dsl-noise-dim must be in [1, 4096], got {self.dsl_noise_dim}")
        for name in ("dsl_beta", "dsl_converter_grad_scale"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise DLMError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
        if self.dsl_train_converter_weight and self.lora is None:
            raise DLMError("--dsl-train-converter-weight is for --lora runs (a full run trains the converter's W anyway)")
        if self.anneal_steps:
            raise DLMError("--anneal-steps is for a2d")

    def _validate_lora(self) -> None:
        if self.lora is None:
            given = [f"--lora-{k}" for k in ("alpha", "dropout", "targets")
                     if getattr(self, f"lora_{k}") not in (None, 0.0)]
            if given:
                raise DLMError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for a LoRA adapter: "
                               "pass --lora RANK too")
            return
        if self.lora < 1:
            raise DLMError(f"--lora (the adapter's rank) must be >= 1, got {self.lora}")
        if self.init is None:
            raise DLMError("--lora trains an adapter on an existing model: pass --init MODEL (a directory or a "
                           "model name)")
        if self.lora_alpha is not None and not (self.lora_alpha > 0 and math.isfinite(self.lora_alpha)):
            raise DLMError(f"--lora-alpha must be a positive number, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise DLMError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lora_targets is not None:
            bad = [t for t in self.lora_targets if not t.isidentifier()] or ([] if self.lora_targets else [""])
            if bad:
                raise DLMError(f"--lora-targets takes layer names such as q_proj,v_proj; {bad[0]!r} is not one")

    def _validate_idlm(self) -> None:
        names = {"stride": None, "stride_schedule": None, "clean_weight": None, "lora_mask_slots_only": False}
        given = [f"--{k.replace('_', '-')}" for k, unset in names.items() if getattr(self, k) != unset]
        if self.objective != "idlm":
            if given:
                raise DLMError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for --objective idlm")
            return
        if self.stride is not None and self.stride_schedule is not None:
            raise DLMError("--stride and --stride-schedule both set the stride: pass one")
        if self.stride is not None and self.stride < 2:
            raise DLMError(f"--stride must be >= 2 (one clean token and N - 1 mask slots per forward), got {self.stride}")
        phases = stride_phases(self.stride, self.stride_schedule)
        if phases[-1][1] >= self.max_steps:
            raise DLMError(f"--stride-schedule {self.stride_schedule}: step {phases[-1][1]} is never reached in "
                           f"--max-steps {self.max_steps}")
        if max(n for n, _ in phases) > self.seq_len:
            raise DLMError(f"stride {max(n for n, _ in phases)} is longer than --seq-len {self.seq_len}")
        if self.seq_len < 2:
            raise DLMError("--objective idlm needs --seq-len >= 2 (the first token is never a target)")
        if self.clean_weight is not None:
            parse_clean_weight(str(self.clean_weight))
        if self.anneal_steps:
            raise DLMError("--anneal-steps is for a2d; idlm attention is block-causal from the start")
        if self.lora_mask_slots_only and self.lora is None:
            raise DLMError("--lora-mask-slots-only gates a LoRA adapter: pass --lora RANK too")

    def resolved(self) -> TrainConfig:
        """A copy with typed paths made absolute (relative to the current directory), ``lora_alpha``
        2 x ``lora`` when left out and an idlm run's ``stride`` 4 when no stride is given. Left out,
        ``data`` and a new model's ``tokenizer`` stay None - the shipped folders, wherever the
        command runs from and wherever the checkout lives (:meth:`data_dir`, :meth:`tokenizer_dir`),
        so a moved checkout still resumes its runs."""
        def absolute(path: str | None) -> str | None:
            return None if path is None else str(Path(path).expanduser().resolve())

        init = self.init
        if init is not None and Path(init).expanduser().exists():  # else a shipped model's name
            init = absolute(init)
        alpha = float(2 * self.lora) if self.lora is not None and self.lora_alpha is None else self.lora_alpha
        stride, weight = self.stride, self.clean_weight
        if self.objective == "idlm" and stride is None and self.stride_schedule is None:
            stride = DEFAULT_STRIDE
        if weight is not None:  # "AUTO", "0.5" -> "auto", 0.5
            weight = parse_clean_weight(str(weight))
        return replace(self, data=absolute(self.data), tokenizer=absolute(self.tokenizer), init=init, lora_alpha=alpha,
                       stride=stride, clean_weight=weight)

    @property
    def is_sft(self) -> bool:
        """(prompt, answer) examples in the chat template: the Debian summaries or generated arithmetic."""
        return self.task in ("sft", "arith")

    def data_dir(self) -> Path:
        from dlm.paths import data_path

        return data_path(self.data, "debian")

    def tokenizer_dir(self) -> Path:
        from dlm.paths import data_path

        return data_path(self.tokenizer, "tokenizer")


def warmup_steps(cfg: TrainConfig, start: int = 0) -> int:
    """Warm-up steps of a schedule from ``start`` to ``max_steps``: ``cfg.warmup_steps``, or by default
    DEFAULT_WARMUP capped at a tenth of the steps."""
    if cfg.warmup_steps is not None:
        return cfg.warmup_steps
    return min(DEFAULT_WARMUP, (cfg.max_steps - start) // 10)


def lr_at(step: int, cfg: TrainConfig, start: int = 0) -> float:
    """Linear warm-up from ``start``, then cosine decay to ``min_lr_ratio * lr`` at ``max_steps``."""
    warmup, s, total = warmup_steps(cfg, start), step - start, cfg.max_steps - start
    if s < warmup:
        return cfg.lr * (s + 1) / warmup
    progress = min(1.0, (s - warmup) / max(1, total - warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def settings_json(cfg: TrainConfig) -> dict:
    """The settings that define a run (what a rerun must repeat to resume it), as JSON."""
    d = asdict(cfg)
    d.pop("progress", None)
    d.pop("max_minutes", None)  # a budget, not a setting: a resumed run may have another
    if cfg.mixed_precision == "no":  # recorded only when used, so runs from before the option still resume
        d.pop("mixed_precision")
    if cfg.lora is None:  # a full run: recorded as before LoRA existed, so older runs still resume
        for key in ("lora", "lora_alpha", "lora_dropout", "lora_targets"):
            d.pop(key)
    if cfg.objective != "idlm":  # recorded only for idlm runs, so runs from before it still resume
        for key in ("stride", "stride_schedule", "clean_weight", "lora_mask_slots_only"):
            d.pop(key)
    if cfg.objective != "dsl":
        for key in [k for k in d if k.startswith("dsl_")]:
            d.pop(key)
    return d
