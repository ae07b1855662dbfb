"""Loading and saving local Hugging Face-format checkpoint directories.

A checkpoint is a directory with ``config.json`` and weights as one ``model.safetensors``, sharded
safetensors with ``model.safetensors.index.json``, or (older releases) ``pytorch_model.bin``.
Nothing is ever downloaded. Every failure is a :class:`CheckpointError` naming the file and field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from dlm.errors import CheckpointError, DLMError, first_line
from dlm.models import dream
from dlm.models.diffusion_lm import DiffusionLM
from dlm.models.dsl import dsl_from_tensors, pop_dsl_tensors
from dlm.models.llada import LLaDAConfig, LLaDAModelLM
from dlm.models.locate import resolve_model_path
from dlm.models.registry import FAMILIES, resolve_facts

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None -> float32 on CPU, bfloat16 on accelerators."""
    if dtype is None:
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise DLMError(f"unknown dtype {dtype!r} (choose one of: {', '.join(sorted(_DTYPES))})")
    return _DTYPES[dtype]


_BACKENDS = {"cuda": "CUDA", "mps": "MPS (Apple Metal)", "xpu": "XPU (Intel GPU)"}


def parse_device(device: str | torch.device) -> torch.device:
    """A torch device that exists on this machine; anything else is a one-line DLMError."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DLMError(f"unknown device {device!r}: {first_line(e)}") from None
    if dev.type == "cpu":
        return dev
    backend = getattr(torch, dev.type, None)  # torch.cuda, torch.mps, torch.xpu, a plugin's module...
    if dev.type == "mps":
        available = torch.backends.mps.is_available()
    else:
        is_available = getattr(backend, "is_available", None)
        if is_available is None:
            raise DLMError(f"device {str(device)!r} is not supported (use cpu, cuda, mps or xpu)")
        available = bool(is_available())
    name = _BACKENDS.get(dev.type, dev.type)
    if not available:
        raise DLMError(f"device {str(device)!r} was requested but {name} is not available on this machine")
    count = getattr(backend, "device_count", None)
    if dev.index is not None and count is not None and dev.index >= count():
        n = count()
        valid = f"{dev.type}:0" if n == 1 else f"{dev.type}:0 to {dev.type}:{n - 1}"
        raise DLMError(f"device {str(device)!r} was requested but is not available: this machine has {n} {name} "
                       f"device{'s' if n != 1 else ''} ({valid})")
    return dev


def read_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise CheckpointError(f"{path}: model directory does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path}: expected a model directory (with config.json), got a file")
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise CheckpointError(f"{cfg_file}: missing (every checkpoint directory needs a config.json)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_file}: expected a JSON object")
    model_type = cfg.get("model_type")
    if model_type is None:
        raise CheckpointError(f"{cfg_file}: field 'model_type' is missing")
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise CheckpointError(
            f"{cfg_file}: field 'model_type' = {model_type!r} is not supported "
            f"(supported: {', '.join(sorted(FAMILIES))})"
        )
    return cfg


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of the checkpoint and, for each, the file it came from (for error messages)."""
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    bin_single, bin_index = path / "pytorch_model.bin", path / "pytorch_model.bin.index.json"
    if single.exists():
        files = [single]
    elif index.exists() or bin_index.exists():
        idx_file = index if index.exists() else bin_index
        try:
            weight_map = json.loads(idx_file.read_text())["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{idx_file}: not a valid shard index ({first_line(e)})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) and f for f in weight_map.values()):
            raise CheckpointError(f"{idx_file}: field 'weight_map' must map tensor names to shard file names")
        files = [path / f for f in dict.fromkeys(weight_map.values())]
        for f in files:
            if not f.exists():
                raise CheckpointError(f"{idx_file}: names shard {f.name}, which does not exist")
    elif bin_single.exists():
        files = [bin_single]
    else:
        raise CheckpointError(
            f"{path}: no weights found (expected model.safetensors, model.safetensors.index.json or pytorch_model.bin)"
        )
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for f in files:
        try:
            part = load_file(str(f)) if f.suffix == ".safetensors" else torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a corrupt file raises SafetensorError, EOFError, pickle errors...
            raise CheckpointError(f"{f}: cannot read weights ({first_line(e)})") from None
        if not isinstance(part, dict):
            raise CheckpointError(f"{f}: does not hold a dictionary of tensors")
        for k, v in part.items():
            tensors[k] = v
            origin[k] = f.name
    return tensors, origin


def _diffugpt_name(k: str) -> str:
    """DiffuGPT releases name the GPT-2 trunk ``denoise_model.*`` and the embedding ``embed_tokens``."""
    if k.startswith("denoise_model."):
        return "transformer." + k[len("denoise_model."):]
    return "transformer.wte.weight" if k == "embed_tokens.weight" else k


def _remap_diffugpt(tensors: dict[str, torch.Tensor], origin: dict[str, str]) -> None:
    """Rename DiffuGPT tensors in place (and their origins), dropping GPT-2's unused attention buffers."""
    if not any(k.startswith("denoise_model.") for k in tensors):
        return
    for k in list(tensors):
        new = _diffugpt_name(k)
        tensor, src = tensors.pop(k), origin.pop(k)
        if new.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers of old GPT-2 exports, not parameters
        tensors[new], origin[new] = tensor, src


def load_weights_strict(module: nn.Module, tensors: dict[str, torch.Tensor], origin: dict[str, str], path: Path,
                        optional: set[str] = frozenset(), assign: bool = False) -> None:
    """Load ``tensors`` into ``module``; every parameter must be present with the right shape.

    ``assign=True`` adopts the tensors themselves (for a module built on the meta device: no copy).
    """
    own = module.state_dict()
    for name, want in own.items():
        if name not in tensors:
            if name in optional:
                continue
            raise CheckpointError(f"{path}: tensor '{name}' is missing from the weights (required by config.json)")
        got = tensors[name]
        if tuple(got.shape) != tuple(want.shape):
            raise CheckpointError(
                f"{path / origin[name]}: tensor '{name}' has shape {tuple(got.shape)} but config.json "
                f"implies {tuple(want.shape)}"
            )
    unexpected = [k for k in tensors if k not in own]
    if unexpected:
        raise CheckpointError(
            f"{path / origin[unexpected[0]]}: unexpected tensor '{unexpected[0]}' "
            f"({len(unexpected)} not used by the architecture in config.json)"
        )
    module.load_state_dict(tensors, strict=False, assign=assign)


def _build_llada(path: Path, cfg: dict[str, Any], tensors, origin, dtype: torch.dtype) -> nn.Module:
    llada_cfg = LLaDAConfig.from_dict(cfg, source=str(path / "config.json"))
    with torch.device("meta"):  # no random init, no second copy of the weights
        net = LLaDAModelLM(llada_cfg)
    for k in tensors:
        tensors[k] = tensors[k].to(dtype)
    load_weights_strict(net, tensors, origin, path, assign=True)
    return net


def _build_hf_causal(path: Path, cfg: dict[str, Any], tensors, origin, dtype: torch.dtype) -> nn.Module:
    import transformers

    # Dream declares its own model_type; transformers builds it as the Qwen2 network it is
    hf_fields = dream.qwen2_config(cfg, str(path / "config.json")) if cfg["model_type"] == dream.MODEL_TYPE else cfg
    try:
        hf_cfg = transformers.AutoConfig.for_model(**hf_fields)
        with _no_init():  # the weights are overwritten anyway
            net = transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="sdpa", dtype=dtype)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path / 'config.json'}: transformers cannot build this config ({first_line(e)})") from None
    _remap_diffugpt(tensors, origin)
    tied = bool(getattr(net.config, "tie_word_embeddings", False))
    params = {name for name, _ in net.named_parameters()}
    optional = {k for k in net.state_dict() if k not in params}  # non-persistent buffers
    if tied:
        optional.add("lm_head.weight")
        if any(k.endswith("embed_tokens.weight") or k.endswith("wte.weight") for k in tensors):
            tensors.pop("lm_head.weight", None)  # tied: the input embedding is the head (as from_pretrained does)
    load_weights_strict(net, tensors, origin, path, optional=optional)
    if tied:
        net.tie_weights()
    return net


def _no_init():
    """Skip random initialisation while building a model whose weights are loaded next."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older layout
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            import contextlib

            return contextlib.nullcontext()
    return no_init_weights()


def _load_tokenizer(path: Path) -> Any:
    if not any((path / f).exists() for f in _TOKENIZER_FILES):
        return None
    import transformers

    verbosity = transformers.logging.get_verbosity()
    # AutoTokenizer also reads config.json and warns that it does not know model_type "llada"
    # (dlm builds the model itself); that warning means nothing here.
    transformers.logging.set_verbosity_error()
    try:
        # trust_remote_code=False: never run a checkpoint's own Python code, and never ask about it
        # (real LLaDA configs carry an auto_map that would otherwise trigger an interactive prompt).
        return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for broken tokenizer files
        raise CheckpointError(f"{path}: tokenizer files are present but cannot be loaded ({first_line(e)})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)


def load(path: str | Path | None = None, device: str | torch.device = "cpu",
         dtype: str | torch.dtype | None = None, merge: bool | None = None) -> DiffusionLM:
    """Load a local checkpoint directory as a :class:`DiffusionLM` (``None``: the shipped default;
    a shipped model's name such as ``"tiny-a2d"`` also works, and so does a hub id such as
    ``"GSAI-ML/LLaDA-8B-Instruct"`` that is in the local Hugging Face cache: ``model.path`` is then
    the snapshot directory). Nothing is ever downloaded.

    An adapter directory (``dlm_adapter.json``, from ``dlm train --lora``) loads its base and applies
    the adapter (:mod:`dlm.models.adapters`): merged into the weights (the default), or with
    ``merge=False`` kept apart as a peft ``PeftModel`` in ``model.net``. An R-ISD adapter (acting at
    mask slots only) is always kept apart, gated by the input (:mod:`dlm.models.lora_gate`)."""
    dev = parse_device(device)
    return load_parsed(path, dev, parse_dtype(dtype, dev), merge)


def load_parsed(path: str | Path | None, dev: torch.device, torch_dtype: torch.dtype, merge: bool | None = None,
                tokenizer: bool = True) -> DiffusionLM:
    """:func:`load` with the device and dtype parsed; ``tokenizer=False`` skips reading the tokenizer (an
    adapter that ships its own does not need its base's: 0.4 s less for SmolLM2)."""
    from dlm.models.adapters import is_adapter_dir, load_adapter
    from dlm.models.default import default_path

    # a directory, a shipped model's name ("tiny-ar") or a hub id found in the local HF cache
    path = default_path() if path is None else resolve_model_path(path)
    if path.is_dir() and is_adapter_dir(path):
        return load_adapter(path, dev, torch_dtype, merge=merge)
    if merge is False:
        raise DLMError(f"merge=False keeps a LoRA adapter apart from its base; {path} is not an adapter directory "
                       "(no dlm_adapter.json)")
    cfg = read_config(path)
    family = FAMILIES[cfg["model_type"]]
    tensors, origin = read_state_dict(path)
    dsl_tensors = pop_dsl_tensors(tensors, origin)  # a DSL-LLaDA checkpoint's noise embedding and converter
    build = _build_llada if family.architecture == "llada" else _build_hf_causal
    net = build(path, cfg, tensors, origin, torch_dtype)
    del tensors
    tokenizer = _load_tokenizer(path) if tokenizer else None
    vocab = net.config.padded_vocab_size if isinstance(net, LLaDAModelLM) else net.get_output_embeddings().weight.shape[0]
    facts = resolve_facts(cfg["model_type"], cfg, vocab, tokenizer, source=str(path / "config.json"))
    model = DiffusionLM(net, facts, cfg, tokenizer=tokenizer, path=path)
    model = model.to(device=dev, dtype=torch_dtype).eval()
    if dsl_tensors:
        wte = model.input_embeddings().weight
        model.attach_dsl(dsl_from_tensors(dsl_tensors, wte.shape[0], wte.shape[1], str(path)))
    return model


def save_pretrained(model: DiffusionLM, out_dir: str | Path, max_shard_bytes: int | None = None,
                    dtype: torch.dtype | None = None) -> Path:
    """Write ``config.json``, safetensors weights (sharded above ``max_shard_bytes``, cast to
    ``dtype`` when given) and the tokenizer."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(model.config, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in model.net.state_dict().items()}
    if not model.is_llada and getattr(model.net.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    if model.dsl is not None:  # the released DSL-LLaDA layout: top-level tensors beside the backbone's
        state.update({k: v.contiguous().cpu() for k, v in model.dsl.state_tensors().items()})
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if max_shard_bytes and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
        index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
                 "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(out))
    return out
