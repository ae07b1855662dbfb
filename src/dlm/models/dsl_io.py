"""Reading and writing a model's DSL modules (:mod:`dlm.models.dsl`).

* A full checkpoint directory holds them in the released DSL-LLaDA layout, as top-level tensors of
  its safetensors (``noise_embed.weight``, ``converter.*``, ``log_snr_max``): read by
  :func:`dlm.models.loading.load_parsed`, written by :func:`dlm.models.loading.save_pretrained`.
* An adapter directory (``dlm train --lora``) holds what cannot be rebuilt in ``dsl.safetensors``:
  beta, the logit bias, c, log(s_max), and W only when it was trained. E is rebuilt from its seed
  (``config.json``'s ``dlm_dsl``: ``noise_dim``, ``noise_seed``, ``noise_sha256``, checked on load) and a
  frozen W from the base's input embedding and mask row, as it was initialised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dlm.errors import CheckpointError, first_line
from dlm.models.dsl import DSLModules, dsl_from_tensors, initial_converter_weight, noise_embedding, tensor_sha256

DSL_FILE = "dsl.safetensors"
CONFIG_KEY = "dlm_dsl"


def dsl_config(dsl: DSLModules, seed: int | None, trained_w: bool) -> dict[str, Any]:
    """The ``dlm_dsl`` record of config.json for ``dsl``."""
    return {"noise_dim": dsl.noise_dim, "noise_seed": seed, "noise_sha256": tensor_sha256(dsl.noise_embed.weight),
            "converter_weight": "trained" if trained_w else "input_embedding", "beta": float(dsl.converter.beta.detach())}


def save_adapter_dsl(dsl: DSLModules, out: Path, trained_w: bool) -> None:
    """``dsl.safetensors`` of an adapter directory (E is rebuilt from its seed; W too unless trained)."""
    conv = dsl.converter
    tensors = {"converter.beta": conv.beta.detach().float().cpu(),
               "converter.logit_bias": conv.logit_bias.detach().float().cpu(),
               "converter.backbone_embedding.bias": conv.backbone_embedding.bias.detach().float().cpu(),
               "log_snr_max": dsl.log_snr_max.detach().float().cpu()}
    if trained_w:
        tensors["converter.backbone_embedding.weight"] = conv.backbone_embedding.weight.detach().float().cpu()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / DSL_FILE), metadata={"format": "pt"})


def load_adapter_dsl(path: Path, record: Any, input_embedding: torch.Tensor, mask_id: int | None) -> DSLModules:
    """The DSL modules of the adapter in ``path`` (``record``: its config's ``dlm_dsl``)."""
    file = path / DSL_FILE
    where = f"{path}/config ({CONFIG_KEY})"
    if not isinstance(record, dict) or not isinstance(record.get("noise_dim"), int) \
            or not isinstance(record.get("noise_seed"), int):
        raise CheckpointError(f"{where}: expected an object with integer noise_dim and noise_seed, got {record!r}")
    if not file.exists():
        raise CheckpointError(f"{file}: missing (the adapter is a DSL model: {CONFIG_KEY} in its config)")
    try:
        tensors = load_file(str(file))
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends
        raise CheckpointError(f"{file}: cannot read weights ({first_line(e)})") from None
    if mask_id is None:
        raise CheckpointError(f"{where}: the model has no mask id, needed for the converter's extra slot")
    missing = [k for k in ("converter.beta", "converter.logit_bias", "converter.backbone_embedding.bias")
               if k not in tensors]
    if missing:
        raise CheckpointError(f"{file}: tensor '{missing[0]}' is missing")
    V, d_model = input_embedding.shape
    if "noise_embed.weight" not in tensors:
        E = noise_embedding(V, record["noise_dim"], record["noise_seed"])
        want = record.get("noise_sha256")
        if want is not None and tensor_sha256(E) != want:
            raise CheckpointError(f"{where}: the noise embedding rebuilt from seed {record['noise_seed']} differs from "
                                  "the one it was trained with (noise_sha256): this torch draws another random stream; "
                                  f"store it as noise_embed.weight in {DSL_FILE}")
        tensors["noise_embed.weight"] = E
    if "converter.backbone_embedding.weight" not in tensors:  # frozen at its initialisation: rebuilt from the base
        tensors["converter.backbone_embedding.weight"] = initial_converter_weight(input_embedding, mask_id)
    return dsl_from_tensors(tensors, V, d_model, str(file))
