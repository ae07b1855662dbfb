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
def diffusion_nll_of_block(model, block: torch.Tensor, mc: int, generator: torch.Generator) -> float:
    """MC ELBO bound on -log p(block[1:] | block[0]) / (L - 1) in nats; block (L,) token ids.

    ``mc`` masked copies go through the model as one batch (``mc`` forward passes of the sequence).
    """
    mask_id = model.facts.resolve_mask_id()
    seq = block[None].repeat(mc, 1).to(model.device)  # (mc, L)
    noisy, ratio = stratified_mask(seq, 1, mask_id, generator)
    masked = noisy == mask_id
    logits = model(noisy).logits  # (mc, L, V)
    ce = F.cross_entropy(logits[masked].float(), seq[masked], reduction="none") / ratio[masked]
    return float(ce.sum()) / mc / (seq.shape[1] - 1)


@torch.no_grad()
def diffusion_nll_per_token(model, blocks: torch.Tensor, mc: int = 8, seed: int = 0, progress: bool = False) -> float:
    """Mean over blocks of the MC ELBO bound on -log p(block[1:] | block[0]) / (L - 1), in nats.

    blocks (N, L) token ids, each starting with a conditioning token (BOS); one generator seeded
    with ``seed`` runs through all blocks.
    """
    g = torch.Generator().manual_seed(seed)
    model.eval()
    rows = range(len(blocks))
    if progress:
        from tqdm.auto import tqdm

        rows = tqdm(rows, desc="ELBO", unit="block", leave=False)
    return sum(diffusion_nll_of_block(model, blocks[i], mc, g) for i in rows) / len(blocks)


@torch.no_grad()
def causal_nll_per_block(model, blocks: torch.Tensor) -> list[float]:
    """Exact next-token NLL per token (nats) of each block[1:] given its BOS under a causal LM."""
    model.eval()
    x = blocks.to(model.device)  # (N, L)
    logits = model.net(input_ids=x, use_cache=False).logits  # (N, L, V)
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), x[:, 1:], reduction="none")  # (N, L - 1)
    return ce.mean(dim=1).tolist()


@torch.no_grad()
def causal_nll_per_token(model, blocks: torch.Tensor, batch_size: int = 8) -> float:
    """Exact next-token NLL per token of a causal LM on blocks[:, 1:] given the BOS, in nats."""
    per_block = []
    for i in range(0, len(blocks), batch_size):
        per_block += causal_nll_per_block(model, blocks[i: i + batch_size])
    return sum(per_block) / len(per_block)


def perplexity(nll: float) -> float:
    return math.exp(nll)
