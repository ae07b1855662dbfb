"""The introspective acceptance rate of I-DLM (arXiv 2604.11035): does a model endorse its own tokens?

    alpha = mean over generated tokens k of min(1, p_k(x_k) / q_k(x_k))

``q_k`` is the distribution token ``x_k`` was drawn from when the sampler committed it, ``p_k`` the
model's causal re-scoring of ``x_k`` given the clean prefix (prompt + the generated tokens before
``k``). The paper reports alpha = 0.699 for SDAR, 0.568 for LLaDA-2.0-flash and 0.984 for I-DLM; an
AR model decoded by its own sampler has p = q, so alpha = 1.

What the reference says and what is inferred here. The paper gives the formula above, with ``p_k``
"the causal anchor distribution ... conditioned strictly on prior tokens" computed by a separate
forward pass. The fork of the official code that is readable (thuEcstasy/I-DLM) has no script for
it: its ISD decoder (``idlm_blockN.py``) counts accepted drafts per verify round and logs each
draft's confidence, i.e. the acceptance of ISD's own drafts - what ``isd`` reports as
``stats["acceptance_rate"]`` - not the alpha of other models' samples. Its sampling helper records
a token's probability as ``softmax(l / T)[token]`` and, at T <= 0, ``softmax(l)[argmax]``. So the
choices below are dlm's:

* q is what the sampler recorded (``GenerationOutput.token_probs``): ``softmax(l / T)[x_k]`` of the
  logits that decided the token (``llada``: its commit step; ``ar``: its step; ``isd``: the draft
  slot for an accepted draft at T > 0, else the verify / clean slot). At T = 0 (an argmax, a point
  mass) both q and p are read at T = 1 - the model's own softmax, LLaDA's confidence -, so the rate
  of a causal model is 1 and that of a diffusion model measures how much of its confidence in a
  token the left context alone supports. (The T -> 0 limit would instead be top-1 agreement; the
  T = 1 reading keeps the rate graded.) Top-k / top-p truncation is in neither.
* p at the same temperature as q (``softmax(l' / T)``, T = 0 read at 1), from the model without
  guidance (``cfg_scale`` shapes q only).
* Causal models (``dlm_objective`` causal or idlm: ``ar``, ``isd``): one forward pass of the whole
  sequence with causal attention; the logit at ``k - 1`` predicts ``k``. For a model decoded with a
  KV cache this re-computes the same distributions up to rounding (on CPU about 1e-6 in the logits),
  so "alpha = 1" holds to about 1e-6, not bit for bit.
* Bidirectional diffusion models (LLaDA, AR-adapted DiffuGPT/Dream-style models): "the clean
  prefix" is the canvas with the prompt and ``x_<k`` visible and every position ``>= k`` masked (the
  canvas keeps its length, as during decoding) - the model re-predicts its own token from the left
  context only, which is how the paper's definition carries over to a model without causal
  attention. That is one forward pass per scored position (batched ``batch_size`` at a time):
  ``sum_r n_r`` passes of the ``P + G`` canvas for ``n_r`` scored tokens in row ``r`` - as many as
  decoding the answer one token per step (llada at NFE = G), against one pass for a causal model.
* Positions after the answer's end are left out: a row is scored up to and including its first
  stop token (EOS / end of turn) in the generated region, so the EOS fill is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm.errors import DLMError


@dataclass
class AcceptanceRate:
    """What :func:`acceptance_rate` returns."""

    rates: list[float | None]  # per row: mean of min(1, p / q) over its scored tokens (None: none scored)
    mean: float | None  # mean of the rows' rates (rows with no scored token left out)
    token_mean: float | None  # mean over all scored tokens of the batch
    tokens: list[int]  # scored tokens per row (up to and including the first stop token)
    ratios: torch.Tensor  # (B, G) min(1, p / q); NaN where not scored
    p: torch.Tensor  # (B, G) p_k(x_k) of the causal re-scoring; NaN where not scored
    forwards: int  # forward passes the re-scoring ran


def scored_lengths(model, generated: torch.Tensor) -> list[int]:
    """Per row of ``generated`` (B, G): tokens up to and including the first stop token (else G)."""
    stops = torch.tensor(model.facts.stop_ids or (-1,), device=generated.device)
    is_stop = torch.isin(generated, stops)  # (B, G)
    first = torch.where(is_stop.any(1), is_stop.float().argmax(1) + 1, generated.shape[1])  # (B,)
    return first.tolist()


@torch.no_grad()
def acceptance_rate(model, sequences, prompt_length: int | None = None, token_probs: torch.Tensor | None = None,
                    attention_mask: torch.Tensor | None = None, *, temperature: float | None = None,
                    batch_size: int = 16) -> AcceptanceRate:
    """The introspective acceptance rate of generated tokens (see the module docstring).

    ``sequences`` (B, P + G) prompt + generated ids, ``prompt_length`` P and ``token_probs`` (B, G) q
    of each generated token - or one :class:`dlm.GenerationOutput` carrying all three (and the
    temperature, from its options). ``attention_mask`` is the left-padding mask of the prompts (B, P)
    or of the whole sequences (B, P + G), as passed to :func:`dlm.generate`. ``temperature`` is the
    sampler's (p is read at it; 0 = greedy, read at 1); default: the GenerationOutput's, else 0.
    ``batch_size`` is the number of masked copies per forward pass for a bidirectional model.
    """
    from dlm.sampling.output import GenerationOutput

    if isinstance(sequences, GenerationOutput):
        out = sequences
        if prompt_length is not None or token_probs is not None:
            raise DLMError("pass a GenerationOutput alone, or sequences with prompt_length and token_probs")
        sequences, prompt_length, token_probs = out.sequences, out.prompt_length, out.token_probs
        if temperature is None:
            temperature = float(out.options.get("temperature", 0.0) or 0.0)
        if token_probs is None:
            raise DLMError("this GenerationOutput has no token_probs (q of its tokens), which the introspective "
                           "acceptance rate needs: generate with output_token_probs=True")
    if prompt_length is None or token_probs is None:
        raise DLMError("acceptance_rate needs prompt_length and token_probs (or a GenerationOutput)")
    temperature = 0.0 if temperature is None else float(temperature)
    if temperature < 0:
        raise DLMError(f"temperature must be >= 0, got {temperature}")
    if batch_size < 1:
        raise DLMError(f"batch_size must be >= 1, got {batch_size}")
    device = model.device
    sequences = torch.as_tensor(sequences).to(device)
    if sequences.dim() != 2:
        raise DLMError(f"sequences must have shape (batch, prompt_length + generated), got {tuple(sequences.shape)}")
    B, L = sequences.shape
    P, G = int(prompt_length), L - int(prompt_length)
    token_probs = torch.as_tensor(token_probs).to(device)
    if G < 1 or P < 0 or tuple(token_probs.shape) != (B, G):
        raise DLMError(f"token_probs must have shape (batch, generated) = ({B}, {G}), got {tuple(token_probs.shape)}")
    if attention_mask is not None:
        attention_mask = torch.as_tensor(attention_mask).to(device=device, dtype=torch.long)
        if tuple(attention_mask.shape) == (B, P):
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, G)], dim=1)
        if tuple(attention_mask.shape) != (B, L):
            raise DLMError(f"attention_mask must have shape ({B}, {P}) or ({B}, {L}), "
                           f"got {tuple(attention_mask.shape)}")
    generated = sequences[:, P:]  # (B, G)
    lengths = scored_lengths(model, generated)
    scored = torch.arange(G, device=device)[None] < torch.tensor(lengths, device=device)[:, None]  # (B, G)
    if bool(torch.isnan(token_probs[scored]).any()):
        r, k = (torch.isnan(token_probs) & scored).nonzero()[0].tolist()
        raise DLMError(f"token_probs has no q for generated position {k} of row {r} (a token the sampler "
                       "did not draw)")

    was_training = model.training
    model.eval()
    try:
        if model.facts.causal:
            p, forwards = _causal_p(model, sequences, attention_mask, P, temperature)
        else:
            p, forwards = _masked_prefix_p(model, sequences, attention_mask, P, lengths, temperature, batch_size)
    finally:
        model.train(was_training)
    p = p.float()  # q is stored in float32: compare like with like
    q = token_probs.float()
    ratios = torch.where(p >= q, torch.ones_like(p), p / q)  # (B, G) min(1, p / q); p = q = 0 -> 1
    nan = torch.full_like(ratios, float("nan"))
    ratios, p = torch.where(scored, ratios, nan), torch.where(scored, p, nan)
    rates = [float(ratios[r, :n].double().mean()) if n else None for r, n in enumerate(lengths)]
    kept = [v for v in rates if v is not None]
    total = sum(lengths)
    return AcceptanceRate(
        rates=rates, mean=sum(kept) / len(kept) if kept else None,
        token_mean=float(ratios[scored].double().sum()) / total if total else None,
        tokens=lengths, ratios=ratios.cpu(), p=p.cpu(), forwards=forwards)


def _causal_p(model, sequences: torch.Tensor, attention_mask: torch.Tensor | None, P: int,
              temperature: float) -> tuple[torch.Tensor, int]:
    """p (B, G) of a causal LM: one pass with causal attention, the logit at k - 1 predicting k."""
    from dlm.sampling.output import token_probability

    if P < 1:
        raise DLMError("a causal model predicts a token from the ones before it: the prompt needs at least one token")
    B, L = sequences.shape
    G = L - P
    positions = None if attention_mask is None else (attention_mask.cumsum(-1) - 1).clamp_min(0)  # (B, L)
    logits = model.net(input_ids=sequences, attention_mask=attention_mask, position_ids=positions, use_cache=False,
                       logits_to_keep=G + 1).logits[:, :-1]  # (B, G, V): raw P - 1 .. L - 2
    p = torch.stack([token_probability(logits[r].float(), sequences[r, P:], temperature) for r in range(B)])  # (B, G)
    return p, 1


def _masked_prefix_p(model, sequences: torch.Tensor, attention_mask: torch.Tensor | None, P: int,
                     lengths: list[int], temperature: float, batch_size: int) -> tuple[torch.Tensor, int]:
    """p (B, G) of a bidirectional model: for each scored position k, the canvas with every position
    >= k masked, the model's prediction at k. Passes are ordered by k, so a batch shares most of its
    output head window (``logits_from`` = its smallest k)."""
    from dlm.sampling.output import token_probability

    B, L = sequences.shape
    mask_id = model.facts.resolve_mask_id()
    if model.facts.shifted and P < 1:
        raise DLMError("this model is shifted (AR-adapted): the prompt needs at least one token")
    p = torch.full((B, L - P), float("nan"), dtype=torch.float64, device=sequences.device)
    jobs = [(k, r) for k in range(max(lengths, default=0)) for r in range(B) if k < lengths[r]]  # (answer index, row)
    forwards = 0
    positions = torch.arange(L, device=sequences.device)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        ks = torch.tensor([P + k for k, _ in chunk], device=sequences.device)  # (C,) absolute positions
        rows = torch.tensor([r for _, r in chunk], device=sequences.device)  # (C,)
        ids = sequences[rows].masked_fill(positions[None] >= ks[:, None], mask_id)  # (C, L)
        am = attention_mask[rows] if attention_mask is not None else None
        lo = int(ks.min())
        logits = model(ids, attention_mask=am, logits_from=lo).logits  # (C, L - lo, V)
        forwards += 1
        at = logits[torch.arange(len(chunk)), ks - lo].float()  # (C, V): the prediction at k
        p[rows, ks - P] = token_probability(at, sequences[rows, ks], temperature)
    return p, forwards
