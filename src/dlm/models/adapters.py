"""PEFT adapter directories: what ``dlm train --lora`` writes and ``dlm.load`` reads.

An adapter directory is a standard PEFT one (``adapter_config.json``, ``adapter_model.safetensors``,
written by ``PeftModel.save_pretrained``) plus the tokenizer and dlm's own ``dlm_adapter.json``:

* ``base``: the base model as it was given (a shipped model's name, a base name, a hub id or an
  absolute path) and ``base_sha256``: {weight file name: sha256} of the base's weight files;
* ``config``: the ``config.json`` fields the adapted model sets over the base's (``dlm_objective``,
  a mask id, ``dlm_generation``, ``dlm_training`` ...) and ``config_removed``, the ones it drops;
* ``facts``: the model facts that differ from the base's (mask id, EOS / EoT, causal), for readers;
* ``lora``: rank, alpha, dropout, target layers and the embedding rows that were trained.

:func:`load_adapter` loads the base through :func:`dlm.load` (so names resolve), refuses a base whose
weights are not the recorded ones, applies the adapter with peft and by default merges it.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from dlm.errors import CheckpointError, first_line
from dlm.models.diffusion_lm import DiffusionLM
from dlm.models.registry import ModelFacts, resolve_facts

ADAPTER_FILE = "dlm_adapter.json"
_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors")
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_FACTS = ("mask_id", "eos_ids", "eot_id", "bos_id", "pad_id", "shifted", "causal")


@contextlib.contextmanager
def quiet_peft():
    """peft reads transformers' deprecated ``is_gradient_checkpointing`` when it wraps a model: a
    FutureWarning about peft's code, not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_FILE).is_file()


def weight_files(path: Path) -> list[Path]:
    """The weight files of a model or adapter directory (a shard index's shards, in order)."""
    for index in _INDEX_FILES:
        if (path / index).is_file():
            try:
                shards = json.loads((path / index).read_text())["weight_map"].values()
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise CheckpointError(f"{path / index}: not a valid shard index ({first_line(e)})") from None
            return [path / s for s in sorted(set(shards))]
    files = [path / f for f in _SINGLE_FILES if (path / f).is_file()]
    if not files:
        raise CheckpointError(f"{path}: no weight files (expected one of {', '.join(_SINGLE_FILES + _INDEX_FILES)})")
    return files[:1]


def weight_digests(path: Path) -> dict[str, str]:
    """{file name: sha256 hex} of the weight files of the model directory ``path`` (remembered per
    file and re-hashed whenever the file changes: :func:`dlm.provenance.cached_file_sha256`)."""
    from dlm.provenance import cached_file_sha256

    return {f.name: cached_file_sha256(f) for f in weight_files(path)}


def check_digests(recorded: dict[str, str], base_dir: Path, what: str) -> None:
    """Raise a CheckpointError when the weights in ``base_dir`` are not the ones ``what`` recorded."""
    found = weight_digests(base_dir)
    if found != recorded:
        name = next((n for n in sorted(recorded.keys() | found.keys()) if recorded.get(n) != found.get(n)))
        raise CheckpointError(
            f"{what} was trained on base weights with sha256 {recorded.get(name, '<no such file>')} for {name}, but "
            f"{base_dir / name} has {found.get(name, '<no such file>')}: that is another base model; restore the "
            "original base or retrain the adapter")


def _facts(facts: ModelFacts) -> dict[str, Any]:
    """The facts a sampler reads, as JSON values."""
    values = {k: getattr(facts, k) for k in _FACTS}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def save_adapter(model: DiffusionLM, out: str | Path, *, base: str, base_sha256: dict[str, str],
                 base_config: dict[str, Any], base_facts: ModelFacts, lora: dict[str, Any],
                 dtype: torch.dtype | None = None) -> Path:
    """Write the adapter of ``model`` (whose ``net`` is a peft PeftModel) and its tokenizer to ``out``.

    ``dtype`` casts the saved adapter tensors (the trainable ones); the model itself is left as is.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    net = model.net
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    state = {k: v.detach().to(dtype) if dtype is not None and k in trainable else v
             for k, v in net.state_dict().items()}
    # save_embedding_layers=False: only the LoRA matrices and the trained embedding rows, never a whole embedding
    net.save_pretrained(str(out), state_dict=state, save_embedding_layers=False)
    config = model.config
    changed = {k: v for k, v in config.items() if base_config.get(k, object()) != v}
    if "dlm_objective" in config:
        changed["dlm_objective"] = config["dlm_objective"]
    base_f, own = _facts(base_facts), _facts(model.facts)
    meta = {"base": base, "base_sha256": base_sha256, "config": changed,
            "config_removed": sorted(k for k in base_config if k not in config),
            "facts": {k: v for k, v in own.items() if base_f[k] != v}, "lora": lora}
    (out / ADAPTER_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    if model.dsl is not None:
        from dlm.models.dsl_io import save_adapter_dsl

        save_adapter_dsl(model.dsl, out, trained_w=model.dsl.converter.backbone_embedding.weight.requires_grad)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(out))
    return out


def read_adapter_meta(path: Path) -> dict[str, Any]:
    """``dlm_adapter.json`` of ``path``, checked field by field."""
    file = path / ADAPTER_FILE
    try:
        meta = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: unreadable ({first_line(e)})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    checks = {"base": lambda v: isinstance(v, str) and v != "",
              "base_sha256": lambda v: isinstance(v, dict) and v and all(isinstance(x, str) for x in v.values()),
              "config": lambda v: isinstance(v, dict),
              "config_removed": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)}
    for key, ok in checks.items():
        if key not in meta:
            raise CheckpointError(f"{file}: field '{key}' is missing")
        if not ok(meta[key]):
            raise CheckpointError(f"{file}: field '{key}' = {meta[key]!r} is not valid")
    return meta


def load_adapter(path: Path, device: torch.device, dtype: torch.dtype, merge: bool | None = None) -> DiffusionLM:
    """The base of the adapter in ``path`` with the adapter applied (merged into its weights by
    default, or with ``merge=False`` kept apart as a peft PeftModel in ``model.net``). An R-ISD
    adapter (``dlm_idlm.lora_mask_slots_only``) acts only where the input is the mask token, which
    a merge cannot express: it is kept apart and gated (``merge=True`` is refused)."""
    from peft import PeftModel

    from dlm.models.loading import _TOKENIZER_FILES, _load_tokenizer, load_parsed
    from dlm.models.locate import resolve_model_path

    meta = read_adapter_meta(path)
    idlm = meta["config"].get("dlm_idlm")
    gated = isinstance(idlm, dict) and bool(idlm.get("lora_mask_slots_only"))
    if gated and merge:
        raise CheckpointError(f"{path} is an R-ISD adapter that acts at mask slots only (the committed tokens run the "
                              "base model exactly); merging would apply it everywhere - load it with merge unset "
                              "or merge=False")
    merge = not gated if merge is None else merge
    try:
        base_dir = resolve_model_path(meta["base"])
    except CheckpointError as e:
        raise CheckpointError(f"{path / ADAPTER_FILE}: base model: {e}") from None
    if not base_dir.is_dir():
        raise CheckpointError(f"{path / ADAPTER_FILE}: its base model {meta['base']} is not found ({base_dir} does not "
                              "exist); put the base back there or edit 'base' to where it is now")
    check_digests(meta["base_sha256"], base_dir, f"the adapter {path}")
    own_tokenizer = any((path / f).exists() for f in _TOKENIZER_FILES)
    base = load_parsed(base_dir, device, dtype, tokenizer=not own_tokenizer)
    try:
        with quiet_peft():
            # low_cpu_mem_usage: the LoRA layers are created empty (no random init) and filled from the file
            net = PeftModel.from_pretrained(base.net, str(path), low_cpu_mem_usage=True)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot apply the adapter to {meta['base']} ({first_line(e)})") from None
    if merge:
        net = net.merge_and_unload()
    cfg = {**base.config, **meta["config"]}
    for key in meta["config_removed"]:
        cfg.pop(key, None)
    tokenizer = _load_tokenizer(path) if own_tokenizer else base.tokenizer
    facts = resolve_facts(cfg["model_type"], cfg, base.facts.vocab_size, tokenizer, source=str(path / ADAPTER_FILE))
    if gated:
        from dlm.models.lora_gate import gate_by_mask_token

        gate_by_mask_token(net, facts.resolve_mask_id())
    model = DiffusionLM(net, facts, cfg, tokenizer=tokenizer, path=path).to(device=device, dtype=dtype).eval()
    if "dlm_dsl" in meta["config"]:  # the adapter trained DSL modules (dsl.safetensors)
        from dlm.models.dsl_io import load_adapter_dsl

        model.attach_dsl(load_adapter_dsl(path, cfg["dlm_dsl"], model.input_embeddings().weight, facts.mask_id))
    elif base.dsl is not None:  # an adapter over a DSL model keeps its modules
        model.attach_dsl(base.dsl)
    return model
