"""Checkpoints of a ``dlm train`` run: save (swapped in by renames), resume, and the graceful stop
on Ctrl-C / SIGTERM, as a mixin of :class:`dlm.train.trainer.Trainer`.

A checkpoint (``out/checkpoint``) is accelerate's state (model or LoRA tensors, optimizer, RNG of
every rank) plus ``dlm_state.json`` (step, tokens, seconds, log, settings, process count). The
first Ctrl-C or SIGTERM stops after the current step and saves; a second Ctrl-C stops at once and
saves the last finished step with the RNG rewound to it, so the resumed run is exact.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import threading

import torch

from dlm.train.config import settings_json
from dlm.train.runs import recover_checkpoint


class Checkpointing:
    """Needs ``acc``, ``cfg``, ``out``, ``ckpt``, ``plan``, ``state``, ``lora`` and ``_say`` of the trainer."""

    def _save_checkpoint(self) -> None:
        self.acc.wait_for_everyone()
        tmp = self.out / "checkpoint.tmp"
        if self.acc.is_main_process:
            recover_checkpoint(self.out)  # a swap cut short is completed; a partial checkpoint.tmp goes
        self.acc.wait_for_everyone()
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
            (tmp / "dlm_state.json").write_text(json.dumps({**self.state, "config": settings_json(self.cfg),
                                                            "processes": self.acc.num_processes}, indent=1))
            # swap by renames: at every moment a complete checkpoint exists under a name that
            # recover_checkpoint knows (checkpoint, checkpoint.tmp with its state file, checkpoint.old)
            old = self.out / "checkpoint.old"
            if self.ckpt.exists():
                self.ckpt.rename(old)
            tmp.rename(self.ckpt)
            if old.exists():
                shutil.rmtree(old)
        self.acc.wait_for_everyone()
        self._saved_step = self.state["step"]

    def _resume(self) -> None:
        saved = self.plan.saved  # settings and process count already compared
        # a LoRA checkpoint holds only the trainable tensors (LoraRun.register checks them)
        self.acc.load_state(str(self.ckpt), **({"strict": False} if self.lora is not None else {}))
        self.state = {k: saved[k] for k in ("step", "tokens", "seconds", "log")}
        self.state.update(phase_start=saved.get("phase_start", 0), previous=saved.get("previous"))
        self._say(f"dlm train: resuming {self.out} at step {self.state['step']}")

    def _interrupted(self) -> None:
        """Ctrl-C arrived in the middle of a step: save the last finished step if that is safe."""
        step = self.state["step"]
        if self._updating or self.acc.num_processes > 1:
            why = "during an optimizer update" if self._updating else "in one of several processes"
            kept = "nothing saved" if self._saved_step is None else f"the checkpoint at step {self._saved_step} stays"
            self._say(f"dlm train: interrupted {why}; {kept}. Run the same command again to resume.")
        elif step == self._saved_step or (self._saved_step is None and step == self.state["phase_start"]):
            self._say(f"dlm train: interrupted at step {step}/{self.cfg.max_steps}; nothing new to save. "
                      "Run the same command again to continue.")
        else:
            set_rng_state(self._boundary_rng)  # as it was when the step finished: the resumed run is exact
            self._save_checkpoint()
            self._say(self._resume_hint("interrupted"))

    def _resume_hint(self, what: str) -> str:
        return (f"dlm train: {what} at step {self.state['step']}/{self.cfg.max_steps}; checkpoint in {self.ckpt}. "
                "Run the same command again to resume.")

    @contextlib.contextmanager
    def _stop_on_ctrl_c(self):
        """The first Ctrl-C (SIGINT) or SIGTERM (a scheduler preempting the job) asks the loop to stop
        after the current step, with a checkpoint; a second one interrupts at once."""
        self._stop_requested = False
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request(signum, frame):
            if self._stop_requested:
                if signum == signal.SIGINT:  # a second Ctrl-C: stop now
                    raise KeyboardInterrupt
                return  # launchers repeat SIGTERM (scheduler and agent): the stop is already on its way
            self._stop_requested = True
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            self._say(f"\ndlm train: {name} - stopping after this step to save a checkpoint (press Ctrl-C again "
                      "to stop now)")

        previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def rng_state():
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def set_rng_state(state) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])
