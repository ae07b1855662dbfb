"""The end of a ``dlm train`` run, as a mixin of :class:`dlm.train.trainer.Trainer`: the final
model (an HF-format directory, or a LoRA adapter, staged then moved into place), its
``training_log.json`` and model card; and the rerun of an already finished run, which does nothing.
"""

from __future__ import annotations

import json
import os
import platform
import shutil

import torch

from dlm.provenance import cpu_model, software_versions
from dlm.train.config import settings_json
from dlm.train.idlm import finish_config


class Finishing:
    """Needs ``acc``, ``cfg``, ``out``, ``ckpt``, ``plan``, ``state``, ``model``, ``tokenizer``,
    ``init_chat_template``, ``lora``, ``idlm``, ``data_stats``, ``warmup``, ``_saved_step``, ``_say``
    and ``_save_checkpoint`` of the trainer."""

    def _already_finished(self) -> dict:
        saved = self.plan.saved
        self._say(f"dlm train: {self.out} already holds this finished run ({saved['step']} steps); nothing to do. "
                  "To train it further, pass --continue-finished with a higher --max-steps")
        return {"finished": True, "already_finished": True, "main_process": self.acc.is_main_process,
                **{k: saved[k] for k in ("step", "tokens", "seconds", "log")}}

    def _finish(self) -> None:
        from dlm.train.model_card import write_model_card

        if self._saved_step != self.state["step"]:
            # a run killed while the model is written resumes from here and writes it again
            self._save_checkpoint()
        self.acc.wait_for_everyone()
        if not self.acc.is_main_process:
            return
        from dlm.models.loading import save_pretrained

        cfg = self.cfg
        training = {
            "objective": cfg.objective, "task": cfg.task, "steps": self.state["step"],
            "tokens": self.state["tokens"], "seconds": round(self.state["seconds"], 1), "init": cfg.init,
            "seq_len": cfg.seq_len,
            "final_val_loss": next((e["val_loss"] for e in reversed(self.state["log"]) if "val_loss" in e), None),
        }
        if self.state["previous"] is not None:
            training["continued_from_step"] = self.state["phase_start"]
        self.model.config["dlm_training"] = training
        if cfg.is_sft:
            self.model.config["dlm_generation"] = {"gen_length": cfg.answer_length}
        else:  # pretraining: no template from scratch, else the --init model's (dlm.train.chat)
            self.tokenizer.chat_template = self.init_chat_template
            if self.init_chat_template is None:
                (self.out / "chat_template.jinja").unlink(missing_ok=True)  # a continued SFT model's
        if self.idlm is not None:
            finish_config(self.model.config, cfg)
        if self.dsl is not None:
            from dlm.models.dsl_io import CONFIG_KEY, dsl_config

            trained_w = self.model.dsl.converter.backbone_embedding.weight.requires_grad
            self.model.config[CONFIG_KEY] = dsl_config(self.model.dsl, cfg.dsl_seed, trained_w)
        self.model.path = None
        staged = self.out / "final.tmp"  # written whole, then each file moved into place (OUT may hold a model)
        if staged.exists():
            shutil.rmtree(staged)
        if self.lora is not None:
            self.lora.save(self.model, staged, dtype=getattr(torch, cfg.save_dtype))
        else:
            save_pretrained(self.model, staged, dtype=getattr(torch, cfg.save_dtype))
        for f in sorted(staged.iterdir()):
            os.replace(f, self.out / f.name)
        staged.rmdir()
        run = {"config": settings_json(cfg), "data": self.data_stats, "processes": self.acc.num_processes,
               "hardware": _hardware(), "versions": software_versions(), "warmup_steps": self.warmup, **self.state}
        tmp = self.out / "training_log.json.tmp"
        tmp.write_text(json.dumps(run, indent=1) + "\n")
        os.replace(tmp, self.out / "training_log.json")
        write_model_card(self.out, run, self.model)
        if self.ckpt.exists():
            shutil.rmtree(self.ckpt)



def _hardware() -> dict:
    info = {"platform": platform.platform(), "processor": cpu_model(),
            "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
