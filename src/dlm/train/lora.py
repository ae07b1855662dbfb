"""``dlm train --lora R``: a LoRA adapter (peft) on the ``--init`` model instead of all its weights.

The adapter goes on the linear layers inside the transformer blocks (by default the attention and
MLP projections of the architecture; never the output head), and peft's ``trainable_token_indices``
trains the embedding row of the mask token when a diffusion objective adapts a causal base (its
input row was never trained; with tied embeddings the head's row follows). Nothing else trains.

Checkpoints hold only the trainable tensors (the base is read again on resume) and
``lora_base.json``, the base's weight digests: a resume on another base is refused. The finished
run is an adapter directory (:mod:`dlm.models.adapters`).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import torch
import torch.nn as nn

from dlm.errors import CheckpointError, DLMError
from dlm.models import adapters
from dlm.models.diffusion_lm import DiffusionLM
from dlm.train.config import TrainConfig

_LLAMA = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_TARGETS = {  # model_type -> attention and MLP projections
    "llada": ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"),
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA,
    "gpt2": ("c_attn", "c_proj", "c_fc"),
}
BASE_FILE = "lora_base.json"


def block_pattern(names) -> str:
    """A peft ``target_modules`` regex: modules named one of ``names`` inside a numbered transformer
    block (``...blocks.3.q_proj``, ``...layers.0.mlp.down_proj``), so never LLaDA's top-level
    ``ff_out`` head even though the blocks have an ``ff_out`` too."""
    return r".*\.\d+\.(?:.*\.)?(?:" + "|".join(re.escape(n) for n in names) + ")"


def _block_linears(net: nn.Module) -> set[str]:
    """Names of the linear layers (nn.Linear, GPT-2's Conv1D) inside the transformer blocks."""
    return {name.rsplit(".", 1)[-1] for name, m in net.named_modules()
            if re.fullmatch(r".*\.\d+\..+", name) and (isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D")}


class LoraRun:
    """The LoRA part of one ``dlm train`` run: base model, peft wrapping, checkpoints, adapter."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def load_base(self) -> DiffusionLM:
        """The ``--init`` model (fp32) set up for the objective; records what the adapter needs of it."""
        from dlm.models.loading import load
        from dlm.train.build import for_objective

        cfg = self.cfg
        base = load(cfg.init, dtype="float32")
        self.base_sha256 = adapters.weight_digests(Path(base.path))
        self.base_config, self.base_facts = copy.deepcopy(base.config), base.facts
        model = for_objective(base, cfg.objective, cfg.init)
        # a causal LM never saw the mask token as input: its embedding row trains with the adapter (not
        # when the adapter acts at mask slots only: with tied embeddings the row is also a logit of clean tokens)
        new_row = cfg.objective != "causal" and base.facts.causal and not cfg.lora_mask_slots_only
        self.tokens = [model.facts.mask_id] if new_row else []
        return model

    def settings(self, model: DiffusionLM, available: set[str]) -> dict:
        cfg = self.cfg
        # another LLaMA-style model_type (e.g. Qwen2-based Dream) gets the LLaMA projections
        llama_like = _LLAMA if set(_LLAMA) <= available else ()
        targets = list(cfg.lora_targets or DEFAULT_TARGETS.get(model.facts.model_type, llama_like))
        if not targets:
            raise DLMError(f"dlm has no default LoRA layers for model_type {model.facts.model_type!r}; "
                           "pass --lora-targets NAME,NAME")
        return {"rank": cfg.lora, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout, "targets": targets,
                "trainable_token_indices": self.tokens}

    def apply(self, model: DiffusionLM, trained: Path | None = None) -> None:
        """Wrap ``model.net`` in a peft PeftModel (seeded LoRA init); with ``trained`` (a finished
        run's adapter directory, for --continue-finished) start from that adapter's weights."""
        from peft import LoraConfig, get_peft_model

        available = _block_linears(model.net)
        self.lora = lora = self.settings(model, available)
        missing = [t for t in lora["targets"] if t not in available]
        if missing:
            raise DLMError(f"--lora-targets {missing[0]}: no such linear layer in the transformer blocks of "
                           f"{self.cfg.init} (it has: {', '.join(sorted(available))})")
        config = LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                            target_modules=block_pattern(lora["targets"]),
                            trainable_token_indices=self.tokens or None)
        with torch.random.fork_rng(devices=[]), adapters.quiet_peft():  # LoRA init: the CPU RNG
            torch.manual_seed(self.cfg.seed)
            model.net = get_peft_model(model.net, config)
        model.net.peft_config["default"].base_model_name_or_path = self.cfg.init  # for adapter_config.json
        if trained is not None:
            self._load_trained(model, trained)

    def _load_trained(self, model: DiffusionLM, out: Path) -> None:
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        meta = adapters.read_adapter_meta(out)
        if meta["base_sha256"] != self.base_sha256:
            raise CheckpointError(f"{out} was trained on other base weights than {self.cfg.init} has now "
                                  f"({meta['base_sha256']} != {self.base_sha256}); continue it on its base")
        set_peft_model_state_dict(model.net, load_peft_weights(str(out)))
        model.config.update(meta["config"])

    # -- checkpoints ----------------------------------------------------------------------------
    def register(self, acc) -> None:
        """Make ``acc.save_state`` keep only the trainable tensors (and the base's digests), and
        ``acc.load_state`` check both: a resume loads them over the same base, fresh from disk."""
        def keep_trainable(models, weights, output_dir):
            for model, state in zip(models, weights):
                keep = {n for n, p in model.named_parameters() if p.requires_grad}
                for name in [k for k in state if k not in keep]:
                    del state[name]
            if acc.is_main_process:
                Path(output_dir).mkdir(parents=True, exist_ok=True)
                (Path(output_dir) / BASE_FILE).write_text(json.dumps({"base": self.cfg.init,
                                                                       "base_sha256": self.base_sha256}))

        def check(models, input_dir):
            from safetensors import safe_open

            try:
                saved = json.loads((Path(input_dir) / BASE_FILE).read_text())["base_sha256"]
            except (OSError, ValueError, KeyError, TypeError):
                raise CheckpointError(f"{input_dir}: {BASE_FILE} is missing or unreadable; delete the checkpoint "
                                      "to start over") from None
            if saved != self.base_sha256:
                raise CheckpointError(f"{input_dir} was written over other base weights than {self.cfg.init} has "
                                      f"now ({saved} != {self.base_sha256}); restore that base or start over")
            for i, model in enumerate(models):
                file = Path(input_dir) / f"model{f'_{i}' if i else ''}.safetensors"
                if not file.is_file():  # FSDP / DeepSpeed lay checkpoints out their own way
                    continue
                with safe_open(str(file), "pt") as f:
                    names = set(f.keys())
                want = {n for n, p in model.named_parameters() if p.requires_grad}
                if names != want:
                    raise CheckpointError(f"{file}: holds {len(names)} tensors, not the {len(want)} trainable ones "
                                          "of this LoRA run; delete the checkpoint to start over")

        acc.register_save_state_pre_hook(keep_trainable)
        acc.register_load_state_pre_hook(check)

    def save(self, model: DiffusionLM, out: Path, dtype: torch.dtype) -> None:
        adapters.save_adapter(model, out, base=self.cfg.init, base_sha256=self.base_sha256,
                              base_config=self.base_config, base_facts=self.base_facts, lora=self.lora, dtype=dtype)
