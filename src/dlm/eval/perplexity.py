"""Held-out likelihood of packed text blocks: the masked-diffusion ELBO and the causal-LM NLL.

Each block is ``[BOS] + tokens``; the BOS is the condition (never masked, never scored), so a
diffusion model and a causal LM are scored on exactly the same tokens. The diffusion bound uses
LLaDA's stratified Monte Carlo estimator (``dlm.diffusion.likelihood.stratified_mask``) with
``mc`` masked copies per block; the result is an upper bound on the NLL per token (nats), so
``exp`` of it bounds the perplexity from above.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dlm.diffusion.likelihood import stratified_mask


@torch.no_grad()
def diffusion_nll_per_token(model, blocks: torch.Tensor, mc: int = 8, seed: int = 0, progress: bool = False) -> float:
    """Mean over blocks of the MC ELBO bound on -log p(block[1:] | block[0]) / (L - 1), in nats.

    blocks (N, L) token ids, each starting with a conditioning token (BOS).
    """
    g = torch.Generator().manual_seed(seed)
    mask_id = model.facts.resolve_mask_id()
    model.eval()
    total = 0.0
    rows = range(len(blocks))
    if progress:
        from tqdm.auto import tqdm

        rows = tqdm(rows, desc="ELBO", unit="block", leave=False)
    for i in rows:
        seq = blocks[i: i + 1].repeat(mc, 1).to(model.device)  # (mc, L)
        noisy, ratio = stratified_mask(seq, 1, mask_id, g)
        masked = noisy == mask_id
        logits = model(noisy).logits  # (mc, L, V)
        ce = F.cross_entropy(logits[masked].float(), seq[masked], reduction="none") / ratio[masked]
        total += float(ce.sum()) / mc / (seq.shape[1] - 1)
    return total / len(blocks)


@torch.no_grad()
def causal_nll_per_token(model, blocks: torch.Tensor, batch_size: int = 8) -> float:
    """Exact next-token NLL per token of a causal LM on blocks[:, 1:] given the BOS, in nats."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        x = blocks[i: i + batch_size].to(model.device)
        logits = model.net(input_ids=x, use_cache=False).logits
        total += float(F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                       reduction="sum"))
        count += x[:, 1:].numel()
    return total / count


def perplexity(nll: float) -> float:
    return math.exp(nll)
