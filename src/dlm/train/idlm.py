"""``dlm train --objective idlm``: introspective training of a causal LM (I-DLM, arXiv 2604.11035).

Semantics of thuEcstasy/I-DLM (``modeling_sdar.py`` and llama-factory's ``compute_loss``), written
anew for a ``transformers`` causal LM run through its own modeling code:

* input ``[x_t | x_0]`` (2L tokens), the same position ids in both halves. ``x_0`` is the row,
  ``x_t`` keeps the prompt and turns every answer token into the mask (rate 1, no t). SFT: the
  answer is the synopsis + EOS. Pretraining (plain text): every real token but the first - the
  first has no prediction of its own (as for every shifted model), so it is the "prompt";
* blocks ``position // b`` per half with ``b = N - 1`` mask slots (N = stride); attention: an
  ``x_0`` query sees ``x_0`` causally; an ``x_t`` query in block k sees the ``x_t`` keys of block k
  at or before it and the ``x_0`` keys of blocks < k. Padding keys are hidden (a query always sees
  itself, so no row is empty). Passed as a (B, 1, 2L, 2L) additive float mask;
* logit shift: hidden i predicts token i + 1. A block starting at s sees the clean prefix
  ``x_<s``; the clean logit at s - 1 predicts x_s and mask slot j (at s + j) predicts x_{s+j+1},
  the token j + 2 past the prefix: one forward drafts N tokens (the ``isd`` sampler's stride);
* loss ``L_mask + a L_clean``: ``L_mask`` = sum over masked answer slots i of CE(noisy_i, x_{i+1})
  / number of answer tokens in the batch (no target past a row's last real token: padding, or the
  row end - packed pretraining rows are one sequence, as the causal objective trains them);
  ``L_clean`` = mean over answer targets of CE(clean_i, x_{i+1}) (pretraining: every target);
  ``a`` fixed, or "auto" = sg(L_mask) / sg(L_clean); the reference default is 0.2 for b <= 2
  (N <= 3) and auto for b = 3 (N = 4), so by default larger strides are auto-balanced too.

A stride curriculum ``--stride-schedule N:STEP,...`` trains stride N from optimizer step STEP on
(the first at step 0). Validation always uses the run's final stride, so its numbers compare.
``LoraGate`` (``--lora-mask-slots-only``, R-ISD) lets the LoRA update act at mask slots only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlm.errors import DLMError
from dlm.models.lora_gate import LoraGate

IGNORE = -100
DEFAULT_STRIDE = 4
REFERENCE_WEIGHT = 0.2  # the reference's ce_alpha (b = 1, 2); b = 3 auto-balances


# -- settings -------------------------------------------------------------------------------------
def parse_stride_schedule(text: str) -> list[tuple[int, int]]:
    """``"2:0,4:200"`` -> [(2, 0), (4, 200)]: stride 2 from step 0, 4 from (0-based) step 200 on."""
    phases = []
    for part in text.split(","):
        stride, sep, start = part.strip().partition(":")
        try:
            phases.append((int(stride), int(start)))
        except ValueError:
            raise DLMError(f"--stride-schedule takes STRIDE:FROM_STEP pairs such as 2:0,4:200; {part.strip()!r} "
                           "is not one") from None
    if phases[0][1] != 0:
        raise DLMError(f"--stride-schedule {text}: the first stride must start at step 0")
    if any(b[1] <= a[1] for a, b in zip(phases, phases[1:])):
        raise DLMError(f"--stride-schedule {text}: the steps must increase")
    bad = [n for n, _ in phases if n < 2]
    if bad:
        raise DLMError(f"--stride-schedule {text}: a stride must be >= 2 (one clean token and N - 1 mask slots), "
                       f"got {bad[0]}")
    return phases


def stride_phases(stride: int | None, schedule: str | None) -> list[tuple[int, int]]:
    """[(stride, first step), ...] of a run (a fixed stride is one phase)."""
    if schedule is not None:
        return parse_stride_schedule(schedule)
    return [(DEFAULT_STRIDE if stride is None else stride, 0)]


def parse_clean_weight(text: str) -> float | str:
    """``--clean-weight``: a positive number or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and math.isfinite(value)):
        raise DLMError(f"--clean-weight must be a positive number or auto, got {text!r}")
    return value


def clean_weight_for(stride: int, weight: float | str | None) -> float | str:
    """The weight of L_clean at ``stride``: ``weight``, or the reference's default (None)."""
    if weight is not None:
        return weight
    return REFERENCE_WEIGHT if stride - 1 <= 2 else "auto"


# -- inputs and attention --------------------------------------------------------------------------
def attention_allowed(positions: torch.Tensor, real: torch.Tensor, block: int) -> torch.Tensor:
    """(B, 2L, 2L) bool, query x key over ``[x_t | x_0]``, from ``positions`` (B, L) and ``real`` (B, L)."""
    B, L = positions.shape
    idx = torch.arange(2 * L, device=positions.device)
    clean = idx >= L  # (2L,): the x_0 half
    within = idx % L  # (2L,): index inside its half
    blk = positions.repeat(1, 2) // block  # (B, 2L)
    q_clean, k_clean = clean[:, None], clean[None, :]  # (2L, 1), (1, 2L)
    causal = within[None, :] <= within[:, None]  # (2L, 2L): key at or before the query
    same = blk[:, :, None] == blk[:, None, :]  # (B, 2L, 2L)
    earlier = blk[:, None, :] < blk[:, :, None]  # (B, 2L, 2L): key block < query block
    allowed = (q_clean & k_clean & causal) | (~q_clean & ~k_clean & causal & same) | (~q_clean & k_clean & earlier)
    allowed = allowed & real.repeat(1, 2)[:, None, :]  # padding keys hidden
    return allowed | torch.eye(2 * L, dtype=torch.bool, device=positions.device)  # no empty row


@dataclass
class IDLMInputs:
    input_ids: torch.Tensor  # (B, 2L): [x_t | x_0]
    position_ids: torch.Tensor  # (B, 2L): the same positions in both halves
    allowed: torch.Tensor  # (B, 2L, 2L) bool attention
    answer: torch.Tensor  # (B, L) bool: masked in x_t
    targets: torch.Tensor  # (B, L): token i + 1 (IGNORE past the last real token)

    def bias(self, dtype: torch.dtype) -> torch.Tensor:
        """(B, 1, 2L, 2L) additive mask: 0 where allowed, the dtype's minimum elsewhere."""
        zeros = torch.zeros(self.allowed.shape, dtype=dtype, device=self.allowed.device)
        return zeros.masked_fill(~self.allowed, torch.finfo(dtype).min)[:, None]


def idlm_inputs(ids: torch.Tensor, mask_id: int, stride: int, attention_mask: torch.Tensor | None = None,
                prompt_lengths: torch.Tensor | None = None) -> IDLMInputs:
    """The doubled input of ``ids`` (B, L); ``prompt_lengths`` (B,) for SFT, else the first token is the prompt."""
    real = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    positions = (real.long().cumsum(-1) - 1).clamp_min(0)  # (B, L): left padding does not move them
    first = 1 if prompt_lengths is None else prompt_lengths.to(ids.device)[:, None]
    answer = real & (positions >= first)  # (B, L)
    targets = torch.full_like(ids, IGNORE)
    targets[:, :-1] = ids[:, 1:].masked_fill(~real[:, 1:], IGNORE)
    x_t = ids.masked_fill(answer, mask_id)
    return IDLMInputs(torch.cat([x_t, ids], 1), positions.repeat(1, 2), attention_allowed(positions, real, stride - 1),
                      answer, targets)


def idlm_logits(net, inp: IDLMInputs, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (B, 2L, V) of ``net`` (a transformers causal LM, peft- or DDP-wrapped) on ``inp``,
    or (B, K, V) at the columns ``keep`` (K,) only."""
    dtype = next(net.parameters()).dtype
    return net(input_ids=inp.input_ids, attention_mask=inp.bias(dtype), position_ids=inp.position_ids,
               use_cache=False, logits_to_keep=0 if keep is None else keep).logits


@dataclass
class IDLMLoss:
    loss: torch.Tensor  # L_mask + a L_clean, differentiable
    mask: float  # L_mask
    clean: float  # L_clean
    weight: float  # a as used


def idlm_loss(net, batch: dict[str, torch.Tensor], mask_id: int, stride: int, clean_weight: float | str,
              gate: LoraGate | None = None) -> IDLMLoss:
    """The I-DLM loss of a batch (``input_ids``, optional ``attention_mask`` and ``prompt_lengths``)."""
    ids = batch["input_ids"]
    B, L = ids.shape
    inp = idlm_inputs(ids, mask_id, stride, batch.get("attention_mask"), batch.get("prompt_lengths"))
    noisy_at = inp.answer & (inp.targets != IGNORE)  # (B, L): mask slots with a target
    clean_at = torch.zeros_like(inp.answer)
    clean_at[:, :-1] = inp.answer[:, 1:]  # (B, L): clean positions whose target is an answer token
    keep = torch.cat([noisy_at.any(0), clean_at.any(0)]).nonzero().flatten()  # (K,) columns of the 2L
    column = torch.full((2 * L,), -1, dtype=torch.long, device=ids.device)
    column[keep] = torch.arange(len(keep), device=ids.device)  # 2L column -> index in the kept logits
    if gate is not None:
        gate.value = torch.cat([inp.answer, torch.zeros_like(inp.answer)], 1)[..., None]  # (B, 2L, 1)
    logits = idlm_logits(net, inp, keep)  # (B, K, V)
    b, i = noisy_at.nonzero(as_tuple=True)
    ce_mask = F.cross_entropy(logits[b, column[i]].float(), inp.targets[b, i], reduction="sum")
    l_mask = ce_mask / inp.answer.sum().clamp_min(1)
    b, i = clean_at.nonzero(as_tuple=True)
    l_clean = F.cross_entropy(logits[b, column[L + i]].float(), inp.targets[b, i])
    weight = l_mask.detach() / (l_clean.detach() + 1e-8) if clean_weight == "auto" else clean_weight
    return IDLMLoss(l_mask + weight * l_clean, float(l_mask.detach()), float(l_clean.detach()), float(weight))


# -- the objective in a run -------------------------------------------------------------------------
class IDLMObjective:
    """What ``dlm train`` needs: the loss at a step, the parts for the log, the saved config."""

    def __init__(self, cfg, mask_id: int):
        self.cfg, self.mask_id = cfg, mask_id
        self.phases = stride_phases(cfg.stride, cfg.stride_schedule)
        self.gate = LoraGate() if cfg.lora_mask_slots_only else None
        self.parts: list[IDLMLoss] = []

    @property
    def final_stride(self) -> int:
        return self.phases[-1][0]

    def stride_at(self, step: int) -> int:
        return next(n for n, start in reversed(self.phases) if step >= start)

    def loss(self, net, batch: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        """The loss at optimizer step ``step`` (0-based); in eval mode at the final stride."""
        stride = self.stride_at(step) if net.training else self.final_stride
        gate = self.gate.attach(net) if self.gate is not None else None
        out = idlm_loss(net, batch, self.mask_id, stride, clean_weight_for(stride, self.cfg.clean_weight), gate)
        self.parts.append(out)
        return out.loss

    def log(self, prefix: str = "", step: int | None = None) -> dict:
        """Mean L_mask / L_clean / a of the losses since the last call (``step``: add the stride)."""
        parts, self.parts = self.parts, []
        n = max(1, len(parts))
        entry = {} if step is None else {"stride": self.stride_at(step)}
        entry[f"{prefix}loss_mask"] = round(sum(p.mask for p in parts) / n, 4)
        entry[f"{prefix}loss_clean"] = round(sum(p.clean for p in parts) / n, 4)
        if step is not None:
            entry["clean_weight"] = round(sum(p.weight for p in parts) / n, 4)
        return entry


def finish_config(config: dict, cfg) -> None:
    """The saved model's ``config.json`` fields: ``dlm_objective``, ``dlm_idlm``, the isd stride."""
    phases = stride_phases(cfg.stride, cfg.stride_schedule)
    stride = phases[-1][0]
    config["dlm_objective"] = "idlm"
    config["dlm_idlm"] = {"stride": stride, "mask_slots": stride - 1, "stride_schedule": cfg.stride_schedule,
                          "clean_weight": clean_weight_for(stride, cfg.clean_weight),
                          "lora_mask_slots_only": bool(cfg.lora_mask_slots_only)}
    config["dlm_generation"] = {**(config.get("dlm_generation") or {}), "stride": stride}


def describe(cfg: dict) -> str:
    """The model card's line on an idlm run (``cfg``: the run's settings as JSON)."""
    phases = stride_phases(cfg.get("stride"), cfg.get("stride_schedule"))
    weights = sorted({str(clean_weight_for(n, cfg.get("clean_weight"))) for n, _ in phases})
    strides = (f"stride N = {phases[0][0]}" if len(phases) == 1 else "stride curriculum " +
               ", ".join(f"N = {n} from step {s}" for n, s in phases))
    line = (f"- introspective training (I-DLM): input [x_t | x_0] with the same positions, every answer token "
            f"masked in x_t, block-causal attention of N - 1 mask slots per block, strictly causal x_0; {strides}; "
            f"loss L_mask + a L_clean with a = {' / '.join(weights)}"
            + (" (auto = sg(L_mask) / sg(L_clean))" if "auto" in weights else ""))
    if cfg.get("lora_mask_slots_only"):
        line += "; the LoRA update acts at mask slots only (R-ISD: clean tokens run the base model)"
    return line
