"""DSL continued pretraining (``dlm train --objective dsl``): a masked DLM learns to read noisy embeddings.

As DSL-LLaDA's ``dsl_llada/train/llada_cpt_dsl.py`` with ``dsl_modules.py`` (fengsxy/DSL-LLaDA):

* per sequence, with probability 1 / 10 a *smoothed ROAR* draw: k ~ U{0..L-1} random positions get a
  high SNR s ~ U[0.8 s_max, s_max], the other L - k a low one s ~ U[0, 1); otherwise a log-normal SNR
  s = exp(1.69 + 0.9 N) clamped above at 40, per token (the released ``pertoken`` checkpoints; the
  core copy draws one per sequence: ``per_token=False``); s_max = exp(log_snr_max) = 100;
* z = s E[x] + sqrt(s) eps in float32 at every position, read by the converter into the backbone's
  ``inputs_embeds``;
* loss: plain cross-entropy to the clean token at every position, unweighted, averaged over the
  positions that count. SFT pairs keep the prompt clean (its own token embeddings, as the sampler feeds
  it) and count answer positions only; padding never counts, nor a shifted model's position 0;
* frozen: the output head and E; trained: the backbone (or its LoRA adapter), the converter's W (not
  with LoRA, unless asked: with LoRA it stays at its initialisation, which a load rebuilds), c, b and
  beta. ``converter_grad_scale`` multiplies the converter's gradients (most reference scripts use 25).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dlm.models.dsl import new_dsl
from dlm.models.dsl_io import CONFIG_KEY, DSL_FILE, load_adapter_dsl

ROAR_FRACTION = 10  # one sequence in ten gets a smoothed ROAR draw
LOGNORMAL_MU, LOGNORMAL_SIGMA, LOGNORMAL_MAX = 1.69, 0.9, 40.0


def sample_snr(batch: int, length: int, snr_max: float = 100.0, per_token: bool = True, device=None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """SNRs (B, L), float32: the reference's mixture of smoothed ROAR and log-normal draws, in its order."""
    kw = {"device": device, "generator": generator}
    is_roar = torch.rand(batch, **kw) < (1.0 / ROAR_FRACTION)  # (B,)
    n_roar = int(is_roar.sum())
    n_logn = batch - n_roar
    snrs = torch.empty(batch, length, device=device)
    if n_roar:
        unmask = torch.randint(0, length, (n_roar,), **kw)  # high-SNR positions per ROAR row
        order = torch.argsort(torch.rand(n_roar, length, **kw), dim=1)
        low_snr = order >= unmask[:, None]
        low = torch.rand(n_roar, length, **kw)
        high = snr_max * (0.8 + 0.2 * torch.rand(n_roar, length, **kw))
        snrs[is_roar] = torch.where(low_snr, low, high)
    if n_logn:
        shape = (n_logn, length) if per_token else (n_logn,)
        log_snr = torch.randn(*shape, **kw) * LOGNORMAL_SIGMA + LOGNORMAL_MU
        s = log_snr.exp().clamp(max=LOGNORMAL_MAX)
        snrs[~is_roar] = s if per_token else s[:, None].expand(n_logn, length)
    return snrs


def dsl_loss(model, batch: dict[str, torch.Tensor], shifted: bool, per_token: bool = True,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean CE to the clean tokens of ``batch`` read through noisy embeddings (see the module doc).

    ``model`` is the DiffusionLM (or its accelerate wrapper) with DSL modules in ``model.dsl``."""
    inner = getattr(model, "module", model)
    dsl = inner.dsl
    ids = batch["input_ids"]  # (B, L)
    B, L = ids.shape
    attention_mask = batch.get("attention_mask")
    counts = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    snr = sample_snr(B, L, dsl.snr_max, per_token, ids.device, generator)  # (B, L)
    z = dsl.noisy_embedding(ids, snr, generator)  # (B, L, d) float32
    embeds = dsl.converter(z)  # (B, L, D) float32
    if "prompt_lengths" in batch:  # SFT: the prompt is read clean, the answer counts
        prompt = torch.arange(L, device=ids.device)[None] < batch["prompt_lengths"].to(ids.device)[:, None]
        clean = inner.input_embeddings()(ids).to(embeds.dtype)
        embeds = torch.where(prompt[..., None], clean, embeds)
        counts &= ~prompt
    if shifted:
        counts[:, 0] = False  # no prediction of its own
    embeds = embeds.to(inner.dtype)
    logits = model(None, attention_mask=attention_mask, inputs_embeds=embeds).logits  # (B, L, V)
    return F.cross_entropy(logits[counts].float(), ids[counts])


class DSLObjective:
    """Sets a run's model up for DSL training (modules attached, what stays frozen) and computes its loss."""

    def __init__(self, cfg):
        self.cfg = cfg

    def prepare(self, model, lora: bool, trained=None) -> None:
        """``trained``: a finished LoRA run's directory (--continue-finished), whose dsl.safetensors is reloaded."""
        cfg = self.cfg
        if model.dsl is None and trained is not None and (trained / DSL_FILE).exists():
            record = model.config.get(CONFIG_KEY)
            model.attach_dsl(load_adapter_dsl(trained, record, model.input_embeddings().weight, model.facts.mask_id))
        if model.dsl is None:
            wte = model.input_embeddings().weight
            model.attach_dsl(new_dsl(wte, model.facts.mask_id, cfg.dsl_noise_dim, cfg.dsl_seed, cfg.dsl_beta))
        dsl = model.dsl.float()
        dsl.noise_embed.weight.requires_grad_(False)
        dsl.log_snr_max.requires_grad_(False)
        conv = dsl.converter
        conv.backbone_embedding.weight.requires_grad_(not lora or cfg.dsl_train_converter_weight)
        for p in (conv.backbone_embedding.bias, conv.beta, conv.logit_bias):
            p.requires_grad_(True)
        for p in model.output_head().parameters():  # the head stays as it is (tied: the input embedding too)
            p.requires_grad_(False)
        if cfg.dsl_converter_grad_scale != 1.0:
            scale = cfg.dsl_converter_grad_scale
            for p in conv.parameters():
                if p.requires_grad:
                    p.register_hook(lambda g, s=scale: g * s)

    def loss(self, model, batch, shifted: bool, generator=None) -> torch.Tensor:
        return dsl_loss(model, batch, shifted, self.cfg.dsl_per_token_snr, generator)
