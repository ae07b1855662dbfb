"""What a ``dlm train --out DIR`` folder holds, and what this run may do with it.

An output folder is one of

* new: missing or empty - a run starts there;
* in progress: ``DIR/checkpoint/dlm_state.json`` - the run resumes from it (same settings only);
* finished: ``DIR/training_log.json`` next to the model - the same command again does nothing,
  other settings are refused unless ``continue_finished`` asks to train the finished model further.

Anything else (a file, a folder holding other things, a folder this process cannot write) is
refused here, before any model is built or any data tokenised.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from dlm.errors import DLMError, first_line
from dlm.outputs import check_output_dir

# Where and how a run was asked for, not how it trains: never a reason to refuse a rerun.
IGNORED_KEYS = ("out", "continue_finished")
# The settings that define the model; a continuation trains OUT's model, so they cannot change.
MODEL_KEYS = ("objective", "arch", "size", "tokenizer", "init", "lora", "lora_alpha", "lora_targets")
STATE_FILE = "checkpoint/dlm_state.json"
LOG_FILE = "training_log.json"


@dataclass
class RunPlan:
    kind: str  # new | resume | finished | continue
    saved: dict | None = None  # dlm_state.json (resume) or training_log.json (finished, continue)


def _flat(config: dict) -> dict:
    """{"size": {"d_model": 32}} -> {"size.d_model": 32}, without the ignored keys."""
    flat = {}
    for key, value in config.items():
        if key in IGNORED_KEYS:
            continue
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def changed_settings(saved: dict, current: dict, keys: tuple[str, ...] | None = None) -> list[str]:
    """``["--lr 0.001 -> 0.0005", ...]`` for every setting that differs (restricted to ``keys``)."""
    old, new = _flat(saved), _flat(current)
    changed = []
    for key in sorted(old.keys() | new.keys()):
        if keys is not None and key.split(".")[0] not in keys:
            continue
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            option = "--" + key.split(".")[-1].replace("_", "-")
            changed.append(f"{option} {old.get(key, '<unset>')} -> {new.get(key, '<unset>')}")
    return changed


def _read(path: Path, what: str) -> dict:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            raise ValueError("no 'config' object")
        return saved
    except (OSError, ValueError) as e:
        raise DLMError(f"{path} is unreadable ({first_line(e)}); {what}") from None


def check_writable(out: Path) -> None:
    """Create ``out`` (the run's folder) and make sure a file can be written there, or raise a
    DLMError saying why not."""
    if not out.exists():
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # check_output_dir names what is in the way
    check_output_dir(out, "--out")


def recover_checkpoint(out: Path) -> None:
    """Complete a checkpoint swap that was cut short, and drop partial leftovers.

    A save writes ``checkpoint.tmp`` (its ``dlm_state.json`` last, so with that file it is
    complete and the newest), renames ``checkpoint`` to ``checkpoint.old``, ``checkpoint.tmp`` to
    ``checkpoint``, and deletes ``checkpoint.old``: after a kill at any point the newest complete
    one is found here and becomes ``checkpoint`` again.
    """
    ckpt, tmp, old = out / "checkpoint", out / "checkpoint.tmp", out / "checkpoint.old"
    complete = lambda d: (d / "dlm_state.json").is_file()  # noqa: E731
    for newest in (tmp, ckpt, old):
        if complete(newest):
            if newest != ckpt:
                if ckpt.exists():
                    shutil.rmtree(ckpt)
                newest.rename(ckpt)
            break
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)


def plan_run(out: Path, config: dict, continue_finished: bool = False, is_main: bool = True) -> RunPlan:
    """Decide what ``dlm train`` with ``config`` (TrainConfig as JSON) does in ``out``; refuse what it must not.

    Only the main process (``is_main``) repairs an interrupted checkpoint swap; the others plan after it.
    """
    if out.exists() and not out.is_dir():
        raise DLMError(f"--out {out} is a file; choose a new or empty directory")
    if is_main and out.is_dir():
        recover_checkpoint(out)
    if (out / STATE_FILE).exists():
        saved = _read(out / STATE_FILE, f"delete {out / 'checkpoint'} to start over")
        changed = changed_settings(saved["config"], config)
        if changed:
            raise DLMError(f"{out / 'checkpoint'} was written with different settings ({'; '.join(changed)}); "
                           "rerun with its settings to resume, or use another --out")
        check_writable(out)
        return RunPlan("resume", saved)
    if (out / LOG_FILE).exists():
        saved = _read(out / LOG_FILE, "use another --out")
        changed = changed_settings(saved["config"], config)
        if not changed:
            return RunPlan("finished", saved)
        if not continue_finished:
            raise DLMError(f"{out} holds a finished run with other settings ({'; '.join(changed)}); pass "
                           "--continue-finished to train the finished model further with these settings, "
                           "or use another --out")
        fixed = changed_settings(saved["config"], config, MODEL_KEYS)
        if fixed:
            raise DLMError(f"--continue-finished trains the model in {out}, so the settings that define a model "
                           f"cannot change ({'; '.join(fixed)}); to start another model from it use "
                           f"--init {out} --out NEW_DIR")
        if config["max_steps"] <= saved["step"]:
            raise DLMError(f"{out} finished at step {saved['step']}; --continue-finished trains on to --max-steps, "
                           f"which must be above that (got {config['max_steps']})")
        check_writable(out)
        return RunPlan("continue", saved)
    if continue_finished:
        raise DLMError(f"--continue-finished: {out} holds no finished run to continue; drop the flag to start one")
    if out.is_dir():
        leftovers = (".dlm-probe-",)  # of a write test cut short
        others = sorted(p.name for p in out.iterdir() if not p.name.startswith(leftovers))
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise DLMError(f"--out {out} is not empty ({shown}) and holds no dlm training run; "
                           "choose a new or empty directory")
    check_writable(out)
    return RunPlan("new")
