"""Samplers, reachable by name: ``dlm.generate(model, input_ids, sampler="llada", **options)``."""

from __future__ import annotations

import dataclasses
import sys
import time

import torch

from dlm.errors import DLMError
from dlm.models.lengths import check_length
from dlm.sampling.aliases import resolve_aliases
from dlm.sampling.base import DenoiseState, Sampler, parse_options
from dlm.sampling.output import GenerationOutput, make_generators
from dlm.sampling.autoregressive import ARSampler
from dlm.sampling.dream import DreamSampler
from dlm.sampling.dsl import DSLSampler
from dlm.sampling.fast import FastSampler
from dlm.sampling.isd import ISDSampler
from dlm.sampling.llada import LLaDASampler
from dlm.sampling.wino import WinoSampler
from dlm.sampling.remdm import ReMDMSampler
from dlm.sampling.edit import EditSampler
from dlm.sampling.d3im import D3IMSampler

SAMPLERS: dict[str, type[Sampler]] = {cls.name: cls for cls in (LLaDASampler, FastSampler, DreamSampler, DSLSampler, ARSampler,
                                                          ISDSampler, D3IMSampler, EditSampler, ReMDMSampler, WinoSampler)}


def sampler_options(name: str) -> dict[str, object]:
    """Option names of a sampler with their defaults."""
    return {f.name: f.default for f in dataclasses.fields(sampler_class(name).Options)}


def sampler_class(name: str) -> type[Sampler]:
    if name not in SAMPLERS:
        raise DLMError(f"unknown sampler {name!r} (available: {', '.join(sorted(SAMPLERS))})")
    return SAMPLERS[name]


def default_sampler(model) -> str:
    """``"isd"`` for introspective DLMs (I-DLM), ``"ar"`` for causal LMs, ``"dsl"`` for DSL models,
    ``"llada"`` for other diffusion models."""
    if model.facts.introspective and "isd" in SAMPLERS:
        return "isd"
    if getattr(model, "dsl", None) is not None:
        return "dsl"
    return "ar" if model.facts.causal else "llada"


def _as_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    try:
        tensor = torch.as_tensor(value)  # (dtype checked by the caller: floats are not token ids)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise DLMError(f"{name} must be a tensor or a list of equal-length lists of token ids "
                       "(left-pad a ragged batch: dlm.sampling.batching.left_pad)") from None
    return tensor.long() if tensor.numel() == 0 else tensor  # [] is float32 to torch


def _check_inputs(model, input_ids, attention_mask, mask_id: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    input_ids = _as_tensor(input_ids, "input_ids")
    if attention_mask is not None:
        attention_mask = _as_tensor(attention_mask, "attention_mask")
    if input_ids.dim() == 1:
        if input_ids.numel() == 0:
            raise DLMError("input_ids is empty: pass a batch of prompts (for unconditional generation, "
                           "one empty prompt of shape (1, 0))")
        input_ids = input_ids[None]
        if attention_mask is not None and attention_mask.dim() == 1:
            attention_mask = attention_mask[None]
    if input_ids.dim() != 2:
        raise DLMError(f"input_ids must have shape (batch, prompt_length), got {tuple(input_ids.shape)}")
    if input_ids.shape[0] == 0:
        raise DLMError(f"input_ids has no rows (an empty batch, shape {tuple(input_ids.shape)}); "
                       "pass at least one prompt")
    if input_ids.dtype not in (torch.long, torch.int, torch.int32, torch.int16):
        raise DLMError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
    input_ids = input_ids.long()
    V = model.facts.vocab_size
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= V):
        raise DLMError(f"input_ids contain ids outside the vocabulary [0, {V})")
    if model.facts.shifted and input_ids.shape[1] == 0:
        raise DLMError("this model is shifted (AR-adapted): the prompt needs at least one token (e.g. BOS)")
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise DLMError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}")
        if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise DLMError("attention_mask must contain only 0 (padding) and 1 (token)")
        if input_ids.shape[1] > 1 and bool((attention_mask[:, 1:] < attention_mask[:, :-1]).any()):
            raise DLMError("attention_mask has padding on the right; dlm samplers need left padding "
                           "(set tokenizer.padding_side = 'left')")
        if bool((input_ids[attention_mask == 0] == mask_id).any()):
            raise DLMError(f"padding positions hold the mask token {mask_id}; pad with another id (e.g. EOS)")
        # A row of padding only is an empty prompt: unconditional generation for an unshifted
        # model (as a (1, 0) prompt alone, which left_pad produces for a batch of empty prompts).
        empty = (attention_mask.sum(dim=1) == 0).nonzero().flatten().tolist()
        if empty and model.facts.shifted:
            raise DLMError(f"row {empty[0]} of attention_mask is all zeros (no prompt token); this model is "
                           "shifted (AR-adapted): every prompt needs at least one token (e.g. BOS)")
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
    length it was fine-tuned on) that ``cls`` accepts; explicit options override them.

    A key no sampler knows (nor a Hugging Face alias, see :mod:`dlm.sampling.aliases`) is an
    error naming config.json; a key only another sampler knows (``steps`` when decoding with
    ``ar``) is skipped, since the defaults serve every sampler.
    """
    defaults = (getattr(model, "config", None) or {}).get("dlm_generation") or {}
    where = f"{model.path}/config.json" if getattr(model, "path", None) else "config.json"
    if not isinstance(defaults, dict):
        raise DLMError(f"{where}: dlm_generation must be an object of sampler options, got {defaults!r}")
    known = set().union(*(sampler_options(name) for name in SAMPLERS))
    names = {f.name for f in dataclasses.fields(cls.Options)}
    try:
        defaults = resolve_aliases(defaults, names)
    except DLMError as e:
        raise DLMError(f"{where}: dlm_generation: {e}") from None
    unknown = sorted(set(defaults) - known)
    if unknown:
        raise DLMError(f"{where}: dlm_generation has {unknown[0]!r}, which is no sampler's option "
                       f"(options: {', '.join(sorted(known))})")
    return {k: v for k, v in defaults.items() if k in names}


def prepare_sampler(model, sampler: str, options: dict) -> Sampler:
    """The sampler ``sampler`` with ``options`` (over the checkpoint's defaults), validated for
    ``model``: wrong model kind, unknown or mistyped options and invalid combinations raise.
    Hugging Face option names are translated or refused first (:mod:`dlm.sampling.aliases`)."""
    cls = sampler_class(sampler)
    if model.facts.causal and not cls.for_causal_models:
        raise DLMError(f"{model.path or 'this model'} is a causal (autoregressive) LM; decode it with sampler='ar'")
    if cls.for_causal_models and not model.facts.causal:
        raise DLMError(f"sampler {sampler!r} decodes causal LMs only; {model.path or 'this model'} is a diffusion model")
    options = resolve_aliases(options, {f.name for f in dataclasses.fields(cls.Options)})
    opts = parse_options(cls.Options, sampler, {**model_generation_defaults(model, cls), **options})
    smp = cls(opts)
    if hasattr(opts, "mask_id"):
        opts.mask_id = model.facts.resolve_mask_id(opts.mask_id)  # recorded in GenerationOutput.options
    smp.validate(model)
    return smp


@torch.no_grad()
def generate(model, input_ids, attention_mask=None, *, sampler: str | None = None, return_dict: bool = False,
             output_history: bool = False, output_token_probs: bool = False, progress: bool = False,
             seed: int | list[int] | None = None, on_step=None, **options):
    """Denoise ``gen_length`` masked tokens after each (left-padded) prompt.

    Returns the (B, P + G) token ids, or a :class:`GenerationOutput` (ids, NFE, seconds, history,
    stats, and with ``output_token_probs=True`` ``token_probs``: q of each generated token, see
    :func:`dlm.acceptance_rate`) with ``return_dict=True``. ``sampler=None`` picks ``"isd"`` for introspective models,
    ``"ar"`` for other causal LMs and ``"llada"`` for diffusion models. ``options`` are the sampler's; Hugging Face names are translated
    (``max_new_tokens`` -> ``gen_length``, ``do_sample=False`` -> ``temperature=0``) or refused.

    Random draws (temperature > 0, ``remasking="random"``) depend on ``seed``:

    * ``None``: the global torch RNG (``torch.manual_seed(s)`` before the call reproduces it);
    * an int: one generator for the whole batch. Noise is drawn for the whole (B, P + G) canvas
      at once, exactly as LLaDA's ``generate.py`` does, so a row's sample depends on its batch;
    * a list of ints, one per row: each row gets its own generator and draws its noise over its
      own tokens only (never its left padding), so row ``i`` samples the same whether it runs
      alone (with ``seed=[seed[i]]``) or in any batch. An unpadded row alone with ``seed=[s]``
      samples as with ``seed=s``.

    ``on_step`` (a callable) is called with the :class:`DenoiseState` after every step (its
    canvas ``x``, ``nfe``): how :mod:`dlm.engine` streams a request's canvas.

    An all-padding row (attention mask all zeros) is an empty prompt: unconditional generation
    for an unshifted model (its padding is invisible, so it decodes as a (1, 0) prompt alone, up to
    floating-point rounding), an error naming the row for a shifted one.
    """
    if sampler is None:
        sampler = default_sampler(model)
    smp = prepare_sampler(model, sampler, options)
    opts = smp.opts
    mask_id = opts.mask_id if hasattr(opts, "mask_id") else model.facts.resolve_mask_id()
    input_ids, attention_mask = _check_inputs(model, input_ids, attention_mask, mask_id)
    B, P = input_ids.shape
    G = smp.gen_length()
    rows = B * (2 if float(getattr(opts, "cfg_scale", 0.0)) > 0 else 1)  # guidance adds an unconditional copy
    check_length(model, rows, P + G, f"prompt ({P}) + gen_length ({G})")  # max / memory error, trained-length warning
    x = torch.full((B, P + G), mask_id, dtype=torch.long, device=model.device)  # (B, P + G)
    x[:, :P] = input_ids
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, G)], dim=1)
    generator = make_generators(seed, B, model.device)  # None, one, or one per row
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=smp.total_steps(), desc=f"dlm {sampler}", unit="step", file=sys.stderr, leave=False)
    state = DenoiseState(model, x, attention_mask, P, mask_id, cfg_scale=float(getattr(opts, "cfg_scale", 0.0)),
                         generator=generator, keep_history=output_history, progress=bar,
                         keep_token_probs=output_token_probs, on_step=on_step)
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
        sampler=sampler, options=dataclasses.asdict(opts), stats=state.stats, token_probs=state.token_probs,
    )


__all__ = ["SAMPLERS", "GenerationOutput", "default_sampler", "generate", "prepare_sampler", "sampler_class",
           "sampler_options"]
