"""The registry of model facts every sampler reads: mask id, EOS ids, shifted or not.

Each supported ``model_type`` has a :class:`Family` entry with defaults from its published
checkpoints; a checkpoint's own ``config.json`` and tokenizer override them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dlm.errors import DLMError


@dataclass(frozen=True)
class Family:
    """Defaults and wiring for one ``model_type``."""

    name: str
    shifted: bool  # True: logits at position i predict token i+1 (AR-adapted models)
    architecture: str  # "llada" (dlm's own module) or "hf_causal" (a transformers class)
    mask_id: int | None = None
    eos_ids: tuple[int, ...] = ()
    eot_id: int | None = None
    bos_id: int | None = None
    pad_id: int | None = None
    note: str = ""


FAMILIES: dict[str, Family] = {
    "llada": Family(
        "llada", shifted=False, architecture="llada", mask_id=126336, eos_ids=(126081,), eot_id=126348,
        bos_id=126080, pad_id=126081, note="LLaDA masked diffusion model (bidirectional, unshifted)",
    ),
    "gpt2": Family("gpt2", shifted=True, architecture="hf_causal", note="GPT-2 adapted to diffusion (DiffuGPT)"),
    "llama": Family("llama", shifted=True, architecture="hf_causal", note="LLaMA adapted to diffusion (DiffuLLaMA)"),
    "mistral": Family("mistral", shifted=True, architecture="hf_causal", note="LLaMA-family causal LM, shifted"),
    "qwen2": Family("qwen2", shifted=True, architecture="hf_causal", note="LLaMA-family causal LM, shifted"),
    "qwen3": Family("qwen3", shifted=True, architecture="hf_causal", note="LLaMA-family causal LM, shifted"),
}


@dataclass(frozen=True)
class ModelFacts:
    """What a sampler needs to know about a checkpoint, resolved once at load time."""

    model_type: str
    shifted: bool
    vocab_size: int  # columns of the logits
    mask_id: int | None
    eos_ids: tuple[int, ...] = ()
    eot_id: int | None = None
    bos_id: int | None = None
    pad_id: int | None = None
    max_positions: int | None = None  # hard length limit (learned absolute positions), None = none
    causal: bool = False  # a plain causal LM (config ``dlm_objective: causal``): only the ``ar`` sampler applies
    extra: dict[str, Any] = field(default_factory=dict)

    def resolve_mask_id(self, override: int | None = None) -> int:
        """``override`` if given, else the checkpoint's mask id; checked against the vocabulary."""
        mask_id = self.mask_id if override is None else override
        if mask_id is None:
            raise DLMError("this model has no mask token id (config.json mask_token_id or tokenizer.mask_token); "
                           "pass mask_id=")
        if not 0 <= mask_id < self.vocab_size:
            raise DLMError(f"mask_id {mask_id} is outside the vocabulary [0, {self.vocab_size})")
        return mask_id

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """EOS ids plus the end-of-turn id, deduplicated."""
        ids = list(self.eos_ids)
        if self.eot_id is not None and self.eot_id not in ids:
            ids.append(self.eot_id)
        return tuple(ids)


def _as_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def resolve_facts(model_type: str, config: dict[str, Any], vocab_size: int, tokenizer: Any = None) -> ModelFacts:
    """Merge family defaults, ``config.json`` fields and the tokenizer's special tokens.

    Precedence: config.json > tokenizer > family default. Ids outside the vocabulary are dropped
    from the facts (a tiny model with a small vocabulary has no token 126081).
    """
    fam = FAMILIES[model_type]

    def pick(config_key: str, tok_attr: str | None, default: Any) -> Any:
        if config.get(config_key) is not None:
            return config[config_key]
        if tokenizer is not None and tok_attr and getattr(tokenizer, tok_attr, None) is not None:
            return getattr(tokenizer, tok_attr)
        return default

    def in_vocab(i: int | None) -> int | None:
        return i if i is not None and 0 <= i < vocab_size else None

    mask_id = pick("mask_token_id", "mask_token_id", fam.mask_id)
    eos_ids = _as_ids(pick("eos_token_id", "eos_token_id", fam.eos_ids))
    eot_id = config.get("eot_token_id", fam.eot_id)
    if tokenizer is not None and eot_id is None:
        for name in ("<|eot_id|>", "<|im_end|>", "<|end|>"):
            tid = tokenizer.convert_tokens_to_ids(name) if name in tokenizer.get_vocab() else None
            if tid is not None:
                eot_id = tid
                break
    return ModelFacts(
        model_type=model_type,
        shifted=fam.shifted,
        vocab_size=vocab_size,
        mask_id=in_vocab(mask_id),
        eos_ids=tuple(i for i in eos_ids if in_vocab(i) is not None),
        eot_id=in_vocab(eot_id),
        bos_id=in_vocab(pick("bos_token_id", "bos_token_id", fam.bos_id)),
        pad_id=in_vocab(pick("pad_token_id", "pad_token_id", fam.pad_id)),
        # GPT-2 has learned absolute position embeddings: longer inputs cannot run. RoPE models can.
        max_positions=config.get("n_positions") if model_type == "gpt2" else None,
        causal=config.get("dlm_objective") == "causal",
    )
