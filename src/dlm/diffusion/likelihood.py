"""Monte Carlo estimate of log p(answer | prompt) under a masked diffusion model.

The estimator of LLaDA's ``get_log_likelihood.py`` (Appendix B.5): ``batch_size`` copies of
``[prompt; answer]`` per round; the numbers of masked answer tokens are stratified over 1..L
(``k, k + L/b, k + 2L/b, ...`` modulo L for one random ``k``, so every round covers the mask
ratios evenly, an antithetic-style variance reduction); each copy masks that many answer
positions chosen uniformly; the loss of a copy is the summed cross entropy over masked positions
divided by its mask ratio. The estimate is minus the mean over ``mc_num / batch_size`` rounds of
the per-round mean loss; the prompt is never masked. It lower-bounds the log-likelihood (ELBO).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dlm.diffusion.guidance import guided_logits
from dlm.errors import DLMError


def stratified_mask(batch: torch.Tensor, prompt_length: int, mask_id: int,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """batch (b, l) of identical rows -> (noisy batch (b, l), mask ratio per position (b, l))."""
    b, l = batch.shape
    device = batch.device
    n = l - prompt_length  # answer length
    # Random draws as in the reference: k on the batch's device, the permutations on the CPU; a
    # private generator (``seed=``) lives on the CPU.
    k = torch.randint(1, n + 1, (), device=device if generator is None else "cpu", generator=generator).to(device)
    counts = torch.round(torch.linspace(float(k), k + (b - 1) * (n / b), steps=b, device=device)).long()
    counts = ((counts - 1) % n) + 1  # (b,) masked answer tokens per row, in 1..n
    is_mask = torch.arange(n, device=device).repeat(b, 1) < counts[:, None]  # (b, n)
    for i in range(b):
        is_mask[i] = is_mask[i][torch.randperm(n, generator=generator).to(device)]
    is_mask = torch.cat([torch.zeros(b, prompt_length, dtype=torch.bool, device=device), is_mask], dim=1)
    noisy = torch.where(is_mask, mask_id, batch)
    return noisy, (counts / n)[:, None].repeat(1, l)


def _denoise_logits(model, batch: torch.Tensor, prompt_length: int, cfg_scale: float, mask_id: int) -> torch.Tensor:
    if cfg_scale > 0.0:
        un_batch = batch.clone()
        un_batch[:, :prompt_length] = mask_id
        return guided_logits(model, batch, un_batch, cfg_scale)
    return model(batch).logits


@torch.no_grad()
def loglikelihood(model, prompt, answer, *, mc_num: int = 128, batch_size: int = 16, cfg_scale: float = 0.0,
                  mask_id: int | None = None, seed: int | None = None, progress: bool = False) -> float:
    """Monte Carlo ELBO estimate of log p(answer | prompt) in nats (higher is more likely).

    prompt (P,) and answer (A,) are 1-D token ids (lists or tensors). ``mc_num`` must be a multiple
    of ``batch_size``. ``seed`` uses a private generator; without it the global torch RNG is used.
    """
    prompt = torch.as_tensor(prompt, dtype=torch.long).flatten()
    answer = torch.as_tensor(answer, dtype=torch.long).flatten()
    if answer.numel() == 0:
        raise DLMError("answer is empty: there is nothing to score")
    if batch_size <= 0 or mc_num <= 0 or mc_num % batch_size != 0:
        raise DLMError(f"mc_num ({mc_num}) must be a positive multiple of batch_size ({batch_size})")
    if cfg_scale < 0:
        raise DLMError(f"cfg_scale must be >= 0, got {cfg_scale}")
    facts = model.facts
    mask_id = facts.resolve_mask_id(mask_id)
    if facts.shifted and prompt.numel() == 0:
        raise DLMError("this model is shifted (AR-adapted): the prompt needs at least one token (e.g. BOS)")
    device = model.device
    seq = torch.cat([prompt, answer])[None, :].repeat(batch_size, 1).to(device)  # (b, P + A)
    if int(seq.max()) >= facts.vocab_size or int(seq.min()) < 0:
        raise DLMError(f"token ids outside the vocabulary [0, {facts.vocab_size})")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    was_training = model.training
    model.eval()
    losses = []
    rounds = range(mc_num // batch_size)
    if progress:
        from tqdm.auto import tqdm

        rounds = tqdm(rounds, desc="dlm loglikelihood", unit="batch", leave=False)
    try:
        for _ in rounds:
            noisy, p_mask = stratified_mask(seq, prompt.numel(), mask_id, generator)
            masked = noisy == mask_id
            logits = _denoise_logits(model, noisy, prompt.numel(), cfg_scale, mask_id)
            ce = F.cross_entropy(logits[masked], seq[masked], reduction="none") / p_mask[masked]
            losses.append((ce.sum() / batch_size).item())
    finally:
        model.train(was_training)
    return -sum(losses) / len(losses)
