"""SCOPE-style post-training (``dlm train --objective scope``): teach a masked DLM to revise its
own visible tokens.

"Revise, Don't Freeze" (arXiv 2606.01026) names SCOPE and says it "simulates D3IM's sampling
process" in post-training against the *preservation bias* - a model re-predicts its own wrong
committed tokens, because masked-diffusion training only ever shows it clean visible tokens. The
rule is not public; dlm's (stated here, with the self-generated T2T recipe of arXiv 2606.17175 as
its model) builds the sampling states a sampler would see and supervises recovery from them:

1. noise a batch as the masked-diffusion objective does: t ~ U(eps, 1) per row, each answer
   token masked with probability t (prompt, padding and a shifted model's position 0 never);
2. **no-grad pass** on that canvas: the model's argmax (what ``llada`` and ``d3im`` commit at
   temperature 0) fills a share u ~ U(0, 1) of each row's masked positions, the most confident
   first - the order in which LLaDA's low-confidence sampler commits them. The canvas is now one a sampler could be in mid-generation: some masks, some of the model's own
   (possibly wrong) tokens, the rest clean;
3. **trained pass** on that state: cross-entropy to the ground truth at every position that was
   masked in step 1 - those still masked and those the model filled itself - weighted 1 / t and
   normalised as the masked-diffusion ELBO (per answer token for SFT). With u = 0 it is exactly
   the masked-diffusion loss, so validation losses stay comparable across objectives.

It works with LoRA like every objective (only the adapter's parameters get gradients). The log
records ``fill_error``: the share of self-filled tokens that were wrong, i.e. what there was to
repair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dlm.diffusion.losses import maskable_positions
from dlm.diffusion.masking import EPS, mask_tokens, sample_t


def self_fill(logits: torch.Tensor, masked: torch.Tensor, share: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's argmax (B, L) at every position and which masked positions to fill (B, L) bool:
    the ``floor(share_b * masked_b)`` most confident masked positions of each row."""
    draws = logits.argmax(dim=-1)  # (B, L)
    conf = torch.full(masked.shape, -1.0, device=logits.device)  # (B, L): -1 where not masked
    z = logits[masked].float()  # (M, V): the softmax only where it is needed
    conf[masked] = torch.softmax(z, dim=-1).gather(-1, draws[masked][:, None])[:, 0]
    n_fill = (share * masked.sum(dim=1)).floor().long()  # (B,)
    rank = conf.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # (B, L) 0 = most confident
    return draws, masked & (rank < n_fill[:, None])


class ScopeObjective:
    def __init__(self, mask_id: int):
        self.mask_id = mask_id
        self.fills: list[tuple[int, int]] = []  # (self-filled tokens, wrong ones) per loss call

    def loss(self, model, batch: dict[str, torch.Tensor], shifted: bool, generator: torch.Generator | None = None,
             share: torch.Tensor | None = None) -> torch.Tensor:
        """One Monte Carlo sample of the SCOPE loss; ``share`` (B,) fixes u (default: U(0, 1) per row)."""
        ids = batch["input_ids"]  # (B, L)
        prompt_lengths, attention_mask = batch.get("prompt_lengths"), batch.get("attention_mask")
        B, L = ids.shape
        t = sample_t(B, EPS, ids.device, generator)  # (B,)
        maskable = maskable_positions(model, ids, prompt_lengths, attention_mask, shifted)
        noisy, masked = mask_tokens(ids, self.mask_id, t, maskable, generator)
        if share is None:  # (B,) u: the share of each row's masks the model fills itself
            share = torch.rand(B, device=ids.device, generator=generator)
        with torch.no_grad():
            logits = model(noisy, attention_mask=attention_mask).logits  # (B, L, V)
            draws, fill = self_fill(logits, masked, share)
            del logits
        state = torch.where(fill, draws, noisy)  # (B, L): masks, the model's own tokens, clean tokens
        self.fills.append((int(fill.sum()), int((fill & (draws != ids)).sum())))
        logits = model(state, attention_mask=attention_mask).logits  # (B, L, V)
        ce = F.cross_entropy(logits[masked].float(), ids[masked], reduction="none")  # (M,)
        weighted = ce / t[:, None].expand(B, L)[masked]
        if prompt_lengths is None:
            return weighted.sum() / maskable.sum().clamp_min(1)
        answer_len = maskable.sum(dim=1).clamp_min(1).float()  # (B,)
        per_row = torch.zeros(B, device=ids.device).index_add(0, masked.nonzero()[:, 0], weighted)
        return (per_row / answer_len).sum() / B

    def log(self) -> dict:
        """The share of self-filled tokens that were wrong since the last call."""
        fills, self.fills = self.fills, []
        filled = sum(f for f, _ in fills)
        return {"fill_error": round(sum(w for _, w in fills) / filled, 4) if filled else None}
