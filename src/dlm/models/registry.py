"""The registry of model facts every sampler reads: mask id, EOS ids, shifted or not, lengths.

Each supported ``model_type`` has a :class:`Family` entry with defaults from its published
checkpoints; a checkpoint's own ``config.json`` and tokenizer override them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dlm.errors import CheckpointError, DLMError
from dlm.validation import type_problem


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
    # Dream-v0 (config.json and generation_config.json): <|endoftext|> 151643 is BOS, EOS and pad
    "Dream": Family(
        "Dream", shifted=True, architecture="hf_causal", mask_id=151666, eos_ids=(151643,), bos_id=151643,
        pad_id=151643, note="Dream diffusion LM (Qwen2 network, bidirectional, shifted; see dlm.models.dream)",
    ),
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
    max_length: int | None = None  # longest canvas config.json declares (max_position_embeddings, ...)
    max_length_field: str | None = None  # the config.json field max_length came from
    trained_length: int | None = None  # sequence length of training (config.json dlm_training.seq_len)
    # decoded with causal attention (config ``dlm_objective``: ``causal`` - a plain causal LM - or
    # ``idlm``, an introspective DLM): only the samplers for causal models (``ar``, ``isd``) apply
    causal: bool = False
    introspective: bool = False  # an I-DLM (``dlm_objective: idlm``): mask slots draft, ``isd`` decodes it
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


CAUSAL_OBJECTIVES = ("causal", "idlm")  # training objectives whose models decode with causal attention

_LENGTH_FIELDS = ("max_position_embeddings", "max_sequence_length", "n_positions")


def _is_int(value: Any) -> bool:
    return type_problem(value, "int") is None


def _declared_ids(value: Any, field_name: str, source: str) -> tuple[int, ...]:
    """An id field of config.json / the tokenizer as a tuple (``eos_token_id`` may be a list)."""
    if value is None or (field_name == "pad_token_id" and _is_int(value) and value < 0):
        return ()  # older LLaMA exports write pad_token_id -1 for "no padding token"
    many = isinstance(value, (list, tuple)) and field_name == "eos_token_id"  # only EOS may be several ids
    values = value if many else [value]
    for v in values:
        if not _is_int(v):
            raise CheckpointError(f"{source}: field '{field_name}' = {value!r} must be an integer token id")
    return tuple(int(v) for v in values)


def _positive_int(config: dict[str, Any], key: str, source: str) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    if not _is_int(value) or value <= 0:
        raise CheckpointError(f"{source}: field '{key}' = {value!r} must be a positive integer")
    return int(value)


def declared_lengths(config: dict[str, Any], model_type: str,
                     source: str = "config.json") -> tuple[int | None, str | None, int | None]:
    """(max_length, the config field it came from, trained_length) as ``config.json`` declares them.

    The maximum is ``max_position_embeddings`` / ``max_sequence_length`` / ``n_positions`` (GPT-2's
    learned positions); the trained length is ``dlm_training.seq_len`` (written by ``dlm train``).
    """
    max_length, field_name = None, None
    keys = ("n_positions",) if model_type == "gpt2" else _LENGTH_FIELDS
    for key in keys:
        value = _positive_int(config, key, source)
        if value is not None:
            max_length, field_name = value, key
            break
    training = config.get("dlm_training")
    trained = _positive_int(training, "seq_len", f"{source} dlm_training") if isinstance(training, dict) else None
    return max_length, field_name, trained


def resolve_facts(model_type: str, config: dict[str, Any], vocab_size: int, tokenizer: Any = None,
                  source: str = "config.json") -> ModelFacts:
    """Merge family defaults, ``config.json`` fields and the tokenizer's special tokens.

    Precedence: config.json > tokenizer > family default. An id that config.json (``source``) or the
    tokenizer declares must lie in the vocabulary [0, vocab_size): anything else is a CheckpointError.
    Only family defaults outside the vocabulary are dropped (a tiny LLaDA has no token 126081).
    """
    fam = FAMILIES[model_type]

    def checked(ids: tuple[int, ...], field_name: str, origin: str) -> tuple[int, ...]:
        for i in ids:
            if not 0 <= i < vocab_size:
                raise CheckpointError(f"{origin}: {field_name} {i} is outside the model's vocabulary "
                                      f"[0, {vocab_size})")
        return ids

    def pick(config_key: str, tok_attr: str | None, default: Any) -> tuple[int, ...]:
        if config.get(config_key) is not None:
            return checked(_declared_ids(config[config_key], config_key, source), f"field '{config_key}'", source)
        tok_value = getattr(tokenizer, tok_attr, None) if tokenizer is not None and tok_attr else None
        if tok_value is not None:
            return checked(_declared_ids(tok_value, tok_attr, "tokenizer"), tok_attr, "tokenizer")
        return tuple(i for i in _declared_ids(default, config_key, "family default") if 0 <= i < vocab_size)

    def one(ids: tuple[int, ...]) -> int | None:
        return ids[0] if ids else None

    eot = pick("eot_token_id", None, None)
    if not eot and tokenizer is not None:
        vocab = tokenizer.get_vocab()
        names = [n for n in ("<|eot_id|>", "<|im_end|>", "<|end|>") if n in vocab]
        if names:
            eot = checked((int(vocab[names[0]]),), f"end-of-turn token {names[0]}", "tokenizer")
    if not eot:
        eot = pick("eot_token_id", None, fam.eot_id)
    max_length, length_field, trained = declared_lengths(config, model_type, source)
    return ModelFacts(
        model_type=model_type,
        shifted=fam.shifted,
        vocab_size=vocab_size,
        mask_id=one(pick("mask_token_id", "mask_token_id", fam.mask_id)),
        eos_ids=pick("eos_token_id", "eos_token_id", fam.eos_ids),
        eot_id=one(eot),
        bos_id=one(pick("bos_token_id", "bos_token_id", fam.bos_id)),
        pad_id=one(pick("pad_token_id", "pad_token_id", fam.pad_id)),
        # GPT-2 has learned absolute position embeddings: longer inputs cannot run.
        max_positions=max_length if model_type == "gpt2" else None,
        max_length=max_length,
        max_length_field=length_field,
        trained_length=trained,
        causal=config.get("dlm_objective") in CAUSAL_OBJECTIVES,
        introspective=config.get("dlm_objective") == "idlm",
    )
