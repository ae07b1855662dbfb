"""Samplers, reachable by name: ``dlm.generate(model, input_ids, sampler="llada", **options)``."""

from __future__ import annotations

import dataclasses
import sys
import time

import torch

from dlm.errors import DLMError
from dlm.sampling.base import DenoiseState, GenerationOutput, Sampler, parse_options
from dlm.sampling.autoregressive import ARSampler
from dlm.sampling.llada import LLaDASampler

SAMPLERS: dict[str, type[Sampler]] = {cls.name: cls for cls in (LLaDASampler, ARSampler)}


def sampler_options(name: str) -> dict[str, object]:
    """Option names of a sampler with their defaults."""
    return {f.name: f.default for f in dataclasses.fields(sampler_class(name).Options)}


def sampler_class(name: str) -> type[Sampler]:
    if name not in SAMPLERS:
        raise DLMError(f"unknown sampler {name!r} (available: {', '.join(sorted(SAMPLERS))})")
    return SAMPLERS[name]


def default_sampler(model) -> str:
    """``"ar"`` for causal LMs, ``"llada"`` for diffusion models."""
    return "ar" if model.facts.causal else "llada"


def _check_inputs(model, input_ids, attention_mask, mask_id: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not isinstance(input_ids, torch.Tensor):
        input_ids = torch.as_tensor(input_ids, dtype=torch.long)
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
        if attention_mask is not None and attention_mask.dim() == 1:
            attention_mask = attention_mask[None]
    if input_ids.dim() != 2:
        raise DLMError(f"input_ids must have shape (batch, prompt_length), got {tuple(input_ids.shape)}")
    if input_ids.dtype not in (torch.long, torch.int, torch.int32, torch.int16):
        raise DLMError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
    input_ids = input_ids.long()
    V = model.facts.vocab_size
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= V):
        raise DLMError(f"input_ids contain ids outside the vocabulary [0, {V})")
    if model.facts.shifted and input_ids.shape[1] == 0:
        raise DLMError("this model is shifted (AR-adapted): the prompt needs at least one token (e.g. BOS)")
    if attention_mask is not None:
        attention_mask = torch.as_tensor(attention_mask)
        if attention_mask.shape != input_ids.shape:
            raise DLMError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}")
        if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise DLMError("attention_mask must contain only 0 (padding) and 1 (token)")
        if input_ids.shape[1] > 1 and bool((attention_mask[:, 1:] < attention_mask[:, :-1]).any()):
            raise DLMError("attention_mask has padding on the right; dlm samplers need left padding "
                           "(set tokenizer.padding_side = 'left')")
        if bool((input_ids[attention_mask == 0] == mask_id).any()):
            raise DLMError(f"padding positions hold the mask token {mask_id}; pad with another id (e.g. EOS)")
        attention_mask = attention_mask.to(device=model.device, dtype=torch.long)
    if model.facts.shifted and input_ids.shape[1]:
        first_real = ((attention_mask.to(input_ids.device) == 0).sum(1) if attention_mask is not None
                      else torch.zeros(len(input_ids), dtype=torch.long, device=input_ids.device))  # (B,)
        firsts = input_ids.gather(1, first_real.clamp_max(input_ids.shape[1] - 1)[:, None])  # (B, 1)
        if bool((firsts == mask_id).any()):
            raise DLMError("this model is shifted (AR-adapted): the first prompt token has no prediction of its own "
                           "and must not be the mask token")
    return input_ids.to(model.device), attention_mask


def model_generation_defaults(model, cls: type[Sampler]) -> dict[str, object]:
    """Option defaults a checkpoint declares (config.json ``dlm_generation``, e.g. the answer
    length it was fine-tuned on) that ``cls`` accepts; explicit options override them."""
    defaults = (getattr(model, "config", None) or {}).get("dlm_generation") or {}
    names = {f.name for f in dataclasses.fields(cls.Options)}
    return {k: v for k, v in defaults.items() if k in names}


def prepare_sampler(model, sampler: str, options: dict) -> Sampler:
    """The sampler ``sampler`` with ``options`` (over the checkpoint's defaults), validated for
    ``model``: wrong model kind, unknown or mistyped options and invalid combinations raise."""
    cls = sampler_class(sampler)
    if model.facts.causal and not cls.for_causal_models:
        raise DLMError(f"{model.path or 'this model'} is a causal (autoregressive) LM; decode it with sampler='ar'")
    if cls.for_causal_models and not model.facts.causal:
        raise DLMError(f"sampler {sampler!r} decodes causal LMs only; {model.path or 'this model'} is a diffusion model")
    opts = parse_options(cls.Options, sampler, {**model_generation_defaults(model, cls), **options})
    smp = cls(opts)
    if hasattr(opts, "mask_id"):
        opts.mask_id = model.facts.resolve_mask_id(opts.mask_id)  # recorded in GenerationOutput.options
    smp.validate(model)
    return smp


@torch.no_grad()
def generate(model, input_ids, attention_mask=None, *, sampler: str | None = None, return_dict: bool = False,
             output_history: bool = False, progress: bool = False, seed: int | None = None, **options):
    """Denoise ``gen_length`` masked tokens after each (left-padded) prompt.

    Returns the (B, P + G) token ids, or a :class:`GenerationOutput` (ids, NFE, seconds, history)
    with ``return_dict=True``. ``seed`` makes the run reproducible with its own generator; without
    it the global torch RNG is used (``torch.manual_seed`` before the call reproduces it).
    ``sampler=None`` picks ``"ar"`` for causal LMs and ``"llada"`` for diffusion models.
    """
    if sampler is None:
        sampler = default_sampler(model)
    smp = prepare_sampler(model, sampler, options)
    opts = smp.opts
    mask_id = opts.mask_id if hasattr(opts, "mask_id") else model.facts.resolve_mask_id()
    input_ids, attention_mask = _check_inputs(model, input_ids, attention_mask, mask_id)
    B, P = input_ids.shape
    G = smp.gen_length()
    limit = model.facts.max_positions
    if limit is not None and P + G > limit:
        raise DLMError(f"prompt ({P}) + gen_length ({G}) = {P + G} tokens exceeds this model's {limit} positions")
    x = torch.full((B, P + G), mask_id, dtype=torch.long, device=model.device)  # (B, P + G)
    x[:, :P] = input_ids
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, G)], dim=1)
    generator = torch.Generator(device=model.device).manual_seed(seed) if seed is not None else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=smp.total_steps(), desc=f"dlm {sampler}", unit="step", file=sys.stderr, leave=False)
    state = DenoiseState(model, x, attention_mask, P, mask_id, cfg_scale=float(getattr(opts, "cfg_scale", 0.0)),
                         generator=generator, keep_history=output_history, progress=bar)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        smp.run(state)
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    seconds = time.perf_counter() - start
    if not return_dict and not output_history:
        return state.x
    return GenerationOutput(
        sequences=state.x, prompt_length=P, nfe=state.nfe, seconds=seconds,
        history=torch.stack(state.history) if state.history is not None else None,
        sampler=sampler, options=dataclasses.asdict(opts),
    )


__all__ = ["SAMPLERS", "GenerationOutput", "default_sampler", "generate", "prepare_sampler", "sampler_class",
           "sampler_options"]
