"""log p(answer | prompt): the Monte Carlo ELBO of a masked diffusion model, exact for causal LMs.

The estimator of LLaDA's ``get_log_likelihood.py`` (Appendix B.5): ``batch_size`` copies of
``[prompt; answer]`` per round; the numbers of masked answer tokens are stratified over 1..L
(``k, k + L/b, k + 2L/b, ...`` modulo L for one random ``k``, so every round covers the mask
ratios evenly, an antithetic-style variance reduction); each copy masks that many answer
positions chosen uniformly; the loss of a copy is the summed cross entropy over masked positions
divided by its mask ratio. The estimate is minus the mean over ``mc_num / batch_size`` rounds of
the per-round mean loss; the prompt is never masked. It lower-bounds the log-likelihood (ELBO).
"""

from __future__ import annotations

import numpy
import torch
import torch.nn.functional as F

from dlm.diffusion.guidance import guided_logits
from dlm.errors import DLMError
from dlm.models.lengths import check_length


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


def _rows(value, name: str) -> tuple[list[torch.Tensor], bool]:
    """Token ids -> (rows as 1-D long tensors, whether the input was a batch).

    1-D ids are one row; a 2-D tensor (B, n) or a list of id lists is a batch of B rows.
    """
    if isinstance(value, numpy.ndarray):
        value = torch.as_tensor(value)  # a (B, n) array is a batch, as a tensor would be
    if isinstance(value, torch.Tensor):
        if value.dim() > 2:
            raise DLMError(f"{name} must be 1-D token ids or a 2-D batch (B, length), got shape {tuple(value.shape)}")
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise DLMError(f"{name} must hold integer token ids, got dtype {value.dtype}")
        if value.dim() == 2:
            return [row.long().cpu() for row in value], True
        return [value.long().cpu().flatten()], False
    value = list(value)
    def is_row(v) -> bool:  # a list of rows, not a list of ids (0-d tensors and numpy ints are ids)
        return isinstance(v, (list, tuple)) or (isinstance(v, (torch.Tensor, numpy.ndarray)) and v.ndim > 0)

    if value and all(is_row(v) for v in value):
        return [torch.as_tensor(v, dtype=torch.long).flatten() for v in value], True
    try:
        return [torch.as_tensor(value, dtype=torch.long).flatten()], False
    except (TypeError, ValueError, RuntimeError):
        raise DLMError(f"{name} must be token ids (a list of ints, a 1-D or 2-D tensor, or a list of id lists)") from None


def causal_logprob(model, prompt: torch.Tensor, answer: torch.Tensor) -> tuple[float, bool]:
    """Exact log p(answer | prompt) = sum_i log p(answer_i | prompt, answer_<i) under a causal LM,
    and whether greedy decoding would produce ``answer`` (every answer token is the argmax)."""
    ids = torch.cat([prompt, answer])[None].to(model.device)  # (1, P + A)
    P = prompt.numel()
    logits = model.net(input_ids=ids, use_cache=False).logits[0, P - 1: -1].float()  # (A, V): predict answer
    target = answer.to(model.device)
    logp = torch.log_softmax(logits, -1).gather(1, target[:, None]).sum()
    return float(logp), bool((logits.argmax(-1) == target).all())


def _diffusion_elbo(model, prompt: torch.Tensor, answer: torch.Tensor, mc_num: int, batch_size: int,
                    cfg_scale: float, mask_id: int, generator: torch.Generator | None, progress: bool) -> float:
    """LLaDA's Monte Carlo ELBO estimate of log p(answer | prompt) for one row."""
    seq = torch.cat([prompt, answer])[None, :].repeat(batch_size, 1).to(model.device)  # (b, P + A)
    losses = []
    rounds = range(mc_num // batch_size)
    if progress:
        from tqdm.auto import tqdm

        rounds = tqdm(rounds, desc="dlm loglikelihood", unit="batch", leave=False)
    for _ in rounds:
        noisy, p_mask = stratified_mask(seq, prompt.numel(), mask_id, generator)
        masked = noisy == mask_id
        logits = _denoise_logits(model, noisy, prompt.numel(), cfg_scale, mask_id)
        ce = F.cross_entropy(logits[masked], seq[masked], reduction="none") / p_mask[masked]
        losses.append((ce.sum() / batch_size).item())
    return -sum(losses) / len(losses)


@torch.no_grad()
def loglikelihood(model, prompt, answer, *, mc_num: int = 128, batch_size: int = 16, cfg_scale: float = 0.0,
                  mask_id: int | None = None, seed: int | None = None, progress: bool = False) -> float | list[float]:
    """log p(answer | prompt) in nats (higher is more likely).

    * Diffusion models: LLaDA's Monte Carlo ELBO estimate (a lower bound) with ``mc_num`` masked
      copies, ``batch_size`` per forward pass (``mc_num`` must be a multiple of it).
    * Causal LMs (``dlm_objective: causal``): the exact log-probability from one forward pass;
      ``mc_num`` / ``batch_size`` / ``seed`` do not apply and ``cfg_scale`` must be 0.

    ``prompt`` and ``answer`` are 1-D token ids (-> one float), or batches with one row per pair:
    2-D tensors (B, P) and (B, A), or lists of id lists of any lengths (-> a list of B floats, each
    row scored on its own, exactly as if passed alone); a 1-D prompt with a batch of answers scores
    every answer after that prompt. ``seed`` gives every row a private generator
    seeded with it (identical rows score identically); without it the global torch RNG is used.
    """
    (prompts, prompt_batched), (answers, answer_batched) = _rows(prompt, "prompt"), _rows(answer, "answer")
    batched = prompt_batched or answer_batched
    if not prompt_batched and answer_batched:
        prompts = prompts * len(answers)  # one prompt, several answers (e.g. the choices of a question)
    if len(prompts) != len(answers):
        raise DLMError(f"prompt has {len(prompts)} rows but answer has {len(answers)}; pass one prompt per answer")
    if not prompts:
        raise DLMError("empty batch: there is nothing to score")
    if cfg_scale < 0:
        raise DLMError(f"cfg_scale must be >= 0, got {cfg_scale}")
    facts = model.facts
    if facts.causal:
        if cfg_scale > 0:
            raise DLMError("cfg_scale applies to diffusion models; a causal LM is scored exactly")
    else:
        if batch_size <= 0 or mc_num <= 0 or mc_num % batch_size != 0:
            raise DLMError(f"mc_num ({mc_num}) must be a positive multiple of batch_size ({batch_size})")
        mask_id = facts.resolve_mask_id(mask_id)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        where = f" (row {i})" if batched else ""
        if a.numel() == 0:
            raise DLMError(f"answer is empty{where}: there is nothing to score")
        if (facts.shifted or facts.causal) and p.numel() == 0:
            raise DLMError(f"the prompt{where} needs at least one token (e.g. BOS): this model predicts each token "
                           "from the one before it")
        ids = torch.cat([p, a])
        if int(ids.max()) >= facts.vocab_size or int(ids.min()) < 0:
            raise DLMError(f"token ids{where} outside the vocabulary [0, {facts.vocab_size})")
        check_length(model, 1 if facts.causal else batch_size, len(ids),
                     f"prompt ({p.numel()}) + answer ({a.numel()}){where}")
    was_training = model.training
    model.eval()
    try:
        values = []
        for p, a in zip(prompts, answers):
            if facts.causal:
                values.append(causal_logprob(model, p, a)[0])
                continue
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            values.append(_diffusion_elbo(model, p, a, mc_num, batch_size, cfg_scale, mask_id, generator, progress))
    finally:
        model.train(was_training)
    return values if batched else values[0]
