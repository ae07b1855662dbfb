"""Corruption repair: the model reads a text that may hold wrong tokens and predicts every position.

    import dlm
    fixed = dlm.repair(model, input_ids)                  # (B, L): one forward, argmax everywhere
    out = dlm.repair(model, input_ids, passes=3, keep=prompt_mask, return_dict=True)

One *plain token* forward pass - no mask token, no extra input - and the argmax of the logits at
every position, as DSL-LLaDA's test T1 (``eval_unified.py``, ``eval_corruption_single``) reads a
corrupted text. dlm's :class:`~dlm.models.diffusion_lm.DiffusionLM` aligns logits to positions
(``logits[:, i]`` predicts token ``i``), so the prediction replaces the token in place. A shifted
(AR-adapted) model has no prediction of its own for a row's first token: it keeps it (put a BOS
first, as ``dlm eval --task repair`` and ``dlm repair --text`` do). ``passes=k`` feeds the argmax
back ``k - 1`` more times. Positions in ``keep`` (e.g. a prompt) and padding (``attention_mask`` 0)
never change. ``dlm eval --task repair`` scores this function; ``dlm repair`` is its command line.

Also here: :func:`input_embedding_weight` (the backbone's input embedding matrix) and
:func:`nearest_neighbours` (its cosine nearest neighbours), which the eval task's ``semantic``
corruption draws replacements from.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from dlm.errors import DLMError

MAX_PASSES = 1000  # more forward passes than this is a mistake, not a setting


@dataclass
class RepairOutput:
    """What :func:`repair` returns with ``return_dict=True``."""

    ids: torch.Tensor  # (B, L) the repaired ids
    input_ids: torch.Tensor  # (B, L) the ids that went in (on the model's device)
    passes: int  # forward passes run
    changed: torch.Tensor  # (B,) positions per row whose token differs from the input
    history: torch.Tensor  # (passes, B, L) the ids after each pass (history[-1] == ids)

    def changed_positions(self, row: int = 0) -> list[int]:
        """Positions of ``row`` whose repaired token differs from the input."""
        return (self.ids[row] != self.input_ids[row]).nonzero().flatten().tolist()


def _tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise DLMError(f"{name} must be a tensor or a list of equal-length lists") from None
    return t.long() if t.numel() == 0 and name != "keep" else t


def check_passes(passes: Any, what: str = "passes") -> int:
    """``passes`` as an int in [1, MAX_PASSES], else a DLMError naming ``what``."""
    if isinstance(passes, bool):
        raise DLMError(f"{what} must be an integer number of forward passes, got {passes!r}")
    try:
        passes = operator.index(passes)
    except TypeError:
        raise DLMError(f"{what} must be an integer number of forward passes, got {passes!r}") from None
    if passes < 1:
        raise DLMError(f"{what} must be >= 1 (the number of forward passes), got {passes}")
    if passes > MAX_PASSES:
        raise DLMError(f"{what} must be at most {MAX_PASSES} (each pass is a forward over the whole input), got {passes}")
    return passes


def _check_inputs(model, input_ids, attention_mask, keep, passes):
    passes = check_passes(passes)
    ids = _tensor(input_ids, "input_ids")
    one_row = ids.dim() == 1
    if one_row:
        ids = ids[None]
    if ids.dim() != 2:
        raise DLMError(f"input_ids must have shape (batch, length), got {tuple(_tensor(input_ids, 'input_ids').shape)}")
    if ids.shape[0] == 0:
        raise DLMError(f"input_ids has no rows (an empty batch, shape {tuple(ids.shape)}); pass at least one text")
    if ids.shape[1] == 0:
        raise DLMError("input_ids is empty: there is nothing to repair")
    if ids.dtype not in (torch.long, torch.int, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise DLMError(f"input_ids must be integer token ids, got dtype {ids.dtype}")
    ids = ids.long()
    V = model.facts.vocab_size
    bad = ids[(ids < 0) | (ids >= V)]
    if bad.numel():
        raise DLMError(f"input_ids contain id {int(bad[0])} outside the vocabulary [0, {V})")
    shape = tuple(ids.shape)

    def as_row_shape(value, name):
        t = _tensor(value, name)
        if one_row and t.dim() == 1:
            t = t[None]
        if tuple(t.shape) != shape:
            raise DLMError(f"{name} shape {tuple(_tensor(value, name).shape)} != input_ids shape "
                           f"{tuple(ids.shape[1:]) if one_row else shape}")
        return t

    mask = None
    if attention_mask is not None:
        mask = as_row_shape(attention_mask, "attention_mask")
        if mask.dtype.is_floating_point or mask.dtype.is_complex or not bool(((mask == 0) | (mask == 1)).all()):
            raise DLMError("attention_mask must contain only 0 (padding) and 1 (token)")
        empty = (mask.sum(1) == 0).nonzero().flatten().tolist()
        if empty:
            raise DLMError(f"row {empty[0]} of attention_mask is all zeros: a row needs at least one token to repair")
        mask = mask.to(device=model.device, dtype=torch.long)
        count, first = mask.sum(1), mask.argmax(1)  # tokens per row, first token (argmax: the first 1)
        last = shape[1] - 1 - mask.flip(1).argmax(1)
        holes = (last - first + 1 != count).nonzero().flatten().tolist()
        if holes:
            raise DLMError(f"row {holes[0]} of attention_mask has padding between tokens; pad on the left or the "
                           "right only")
        if bool((mask == 1).all()):
            mask = None  # unpadded: the same forward as without a mask
    fixed = torch.zeros(shape, dtype=torch.bool)
    if keep is not None:
        keep_t = as_row_shape(keep, "keep")
        if keep_t.dtype != torch.bool:
            raise DLMError(f"keep must be a bool tensor (True: never change the token), got dtype {keep_t.dtype}")
        fixed = keep_t.cpu()
    fixed = fixed.to(model.device)
    if mask is not None:
        fixed = fixed | (mask == 0)
    if model.facts.shifted:  # a row's first token has no prediction of its own
        first = mask.argmax(1) if mask is not None else torch.zeros(shape[0], dtype=torch.long, device=model.device)
        fixed[torch.arange(shape[0], device=model.device), first] = True
    return ids.to(model.device), mask, fixed, passes


def leading_token(model) -> int:
    """The token a text is read behind (kept, never scored): BOS, else the first stop id. A shifted model
    has no prediction for the first position, so a text's own first token needs one before it."""
    return model.facts.bos_id if model.facts.bos_id is not None else model.facts.stop_ids[0]


@torch.no_grad()
def repair(model, input_ids, attention_mask=None, passes: int = 1, keep=None,
           return_dict: bool = False) -> torch.Tensor | RepairOutput:
    """Repair ``input_ids`` (B, L) with ``model``: one forward pass without masks, argmax at every
    position; returns the repaired ids (B, L) (a 1-D input is one row: (1, L)).

    * ``passes=k`` runs ``k`` passes, each reading the previous one's output (1 <= k <= 1000);
    * ``keep`` (bool, the shape of ``input_ids``): positions that never change, e.g. a prompt;
    * ``attention_mask`` (0 = padding, on the left or the right): padding never changes nor is attended to; a padded
      row repairs as the same row alone, unpadded (up to floating-point rounding);
    * a shifted (AR-adapted) model keeps each row's first token (it has no prediction of its own);
    * ``return_dict=True`` returns a :class:`RepairOutput` (ids, passes, changed counts, history).

    Bad input (ids outside the vocabulary, shapes that disagree, a non-bool ``keep``, an
    all-padding row, ``passes`` < 1 or > 1000) raises :class:`~dlm.errors.DLMError`.
    """
    from dlm.models.lengths import check_length

    ids, mask, fixed, passes = _check_inputs(model, input_ids, attention_mask, keep, passes)
    B, L = ids.shape
    check_length(model, B, L, f"input ({L} tokens)")  # max / memory error, trained-length warning
    x, history = ids, []
    for _ in range(passes):
        pred = model(x, attention_mask=mask).logits.argmax(-1)  # (B, L), aligned: pred[:, i] is token i's
        x = torch.where(fixed, x, pred)
        history.append(x)
    if not return_dict:
        return x
    return RepairOutput(ids=x, input_ids=ids, passes=passes, changed=(x != ids).sum(1), history=torch.stack(history))


# -- the input embedding and its nearest neighbours ----------------------------------------------
def input_embedding_weight(model) -> torch.Tensor:
    """The backbone's input embedding matrix (rows, d_model): ``model.input_embeddings()``, or
    :meth:`DiffusionLM.input_embeddings` for an object that shadows it (dlm's LLaDA ``wte``, a
    ``transformers`` model's input embeddings, under a PEFT wrapper its base model's)."""
    from dlm.models.diffusion_lm import DiffusionLM

    method = getattr(model, "input_embeddings", None)
    emb = method() if callable(method) else DiffusionLM.input_embeddings(model)
    weight = emb if isinstance(emb, torch.Tensor) else getattr(emb, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise DLMError(f"cannot find the input embedding matrix of {model.path or 'this model'}")
    return weight.detach()


def special_ids(model) -> set[int]:
    """Ids that are not text: the model's mask / BOS / pad / EoT / EOS ids and the tokenizer's
    special tokens (``all_special_ids`` and added tokens marked special)."""
    f = model.facts
    out = {i for i in (f.mask_id, f.bos_id, f.pad_id, f.eot_id, *f.eos_ids) if i is not None}
    tok = model.tokenizer
    if tok is not None:
        out.update(int(i) for i in getattr(tok, "all_special_ids", None) or ())
        decoder = getattr(tok, "added_tokens_decoder", None) or {}
        out.update(int(i) for i, t in decoder.items() if getattr(t, "special", False))
    return {i for i in out if 0 <= i < f.vocab_size}


@torch.no_grad()
def nearest_neighbours(model, token_ids: Iterable[int], k: int, exclude: Iterable[int] = (),
                       chunk: int = 256) -> dict[int, list[int]]:
    """The ``k`` nearest neighbours of each token in the input-embedding space: ``{id: [ids]}``.

    Cosine similarity between embedding rows, computed in float32 on the model's device, over the
    ids ``[0, vocab_size)`` other than the token itself and ``exclude``; neighbours are ordered by
    decreasing similarity, equal similarities by increasing id.
    """
    weight = input_embedding_weight(model)
    V = min(model.facts.vocab_size, weight.shape[0])
    tokens = sorted({int(t) for t in token_ids})
    bad = [t for t in tokens if not 0 <= t < V]
    if bad:
        raise DLMError(f"token id {bad[0]} is outside the embedding's vocabulary [0, {V})")
    excluded = sorted({int(i) for i in exclude if 0 <= int(i) < V})
    if k < 1 or k > V - 1 - len(excluded):
        raise DLMError(f"neighbours must be in [1, {V - 1 - len(excluded)}] (the vocabulary less the token and "
                       f"{len(excluded)} excluded ids), got {k}")
    W = weight[:V]
    inv_norm = torch.cat([W[s:s + 8192].float().norm(dim=-1) for s in range(0, V, 8192)]).clamp_min(1e-12).reciprocal()
    out: dict[int, list[int]] = {}
    window = min(k + 16, V)  # a margin so that ties at the k-th place are ordered by id as well
    ex = torch.tensor(excluded, dtype=torch.long, device=W.device)
    for s in range(0, len(tokens), chunk):
        part = torch.tensor(tokens[s:s + chunk], dtype=torch.long, device=W.device)
        q = W[part].float() * inv_norm[part, None]  # (Q, d), unit rows
        sims = torch.cat([q @ (W[c:c + 8192].float() * inv_norm[c:c + 8192, None]).T for c in range(0, V, 8192)], 1)
        sims[:, ex] = float("-inf")
        sims[torch.arange(len(part), device=W.device), part] = float("-inf")
        vals, idx = sims.topk(window, dim=-1)  # (Q, window)
        for row, tok in enumerate(part.tolist()):
            pairs = sorted(zip(vals[row].tolist(), idx[row].tolist()), key=lambda p: (-p[0], p[1]))
            out[tok] = [i for v, i in pairs[:k]]
    return out
