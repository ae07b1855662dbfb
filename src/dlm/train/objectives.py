"""Training objectives: causal LM, masked diffusion (LLaDA), AR -> diffusion adaptation (DiffuGPT)
and introspective training of a causal LM (I-DLM: :mod:`dlm.train.idlm`).

AR adaptation (DiffuGPT / DiffuLLaMA, LLaMA-Factory ``ddm/trainer.py::inner_forward``):

* t ~ U(eps, 1) per sequence; each token is replaced by the mask with probability t;
* the attention mask is causal OR Bernoulli(r) - one (L, L) draw shared by the batch - with
  r = min(1, (step + 1) / anneal_steps), so attention grows from causal to full;
* the shift: the logit at position i predicts token i + 1, exactly as in the AR model (dlm's
  ``DiffusionLM`` aligns the logits, so position 0 has no prediction and is never masked);
* loss = sum over masked tokens of CE / t, divided by the number of masked tokens in the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dlm.diffusion.losses import masked_diffusion_loss

OBJECTIVES = ("causal", "mdm", "a2d", "idlm", "dsl", "scope")  # dsl: dlm.train.dsl; scope: dlm.train.scope


def anneal_ratio(step: int, anneal_steps: int) -> float:
    """Share of non-causal attention entries opened at (0-based) optimizer step ``step``."""
    if anneal_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / anneal_steps)


def annealed_attention_bias(seq_len: int, ratio: float, dtype: torch.dtype, device=None,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """(1, 1, L, L) additive bias: 0 where query i may attend key j (j <= i, or a Bernoulli(ratio)
    draw for j > i), the dtype's minimum elsewhere."""
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
    if ratio >= 1.0:
        allowed = torch.ones_like(causal)
    elif ratio <= 0.0:
        allowed = causal
    else:
        draw = torch.rand(seq_len, seq_len, device=device, generator=generator) < ratio
        allowed = causal | draw
    bias = torch.zeros(seq_len, seq_len, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    return bias[None, None]


def causal_lm_loss(net, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy (mean over label tokens) of a transformers causal LM."""
    logits = net(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False).logits
    labels = batch["labels"][:, 1:]  # position i predicts token i + 1
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def diffusion_loss(model, batch: dict[str, torch.Tensor], *, mask_id: int, shifted: bool, objective: str, step: int,
                   anneal_steps: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """The masked-diffusion ELBO for pretraining blocks or SFT examples (``prompt_lengths`` in batch)."""
    ids = batch["input_ids"]
    if "prompt_lengths" in batch:  # SFT: prompt kept clean, loss per answer token
        return masked_diffusion_loss(model, ids, mask_id, prompt_lengths=batch["prompt_lengths"],
                                     attention_mask=batch["attention_mask"], generator=generator, shifted=shifted).loss
    if objective == "a2d":
        ratio = anneal_ratio(step, anneal_steps)
        bias = None
        if ratio < 1.0:
            bias = annealed_attention_bias(ids.shape[1], ratio, torch.float32, ids.device, generator)
        return masked_diffusion_loss(model, ids, mask_id, generator=generator, shifted=shifted, attention_bias=bias,
                                     normalize="masked").loss
    return masked_diffusion_loss(model, ids, mask_id, generator=generator, shifted=shifted).loss
