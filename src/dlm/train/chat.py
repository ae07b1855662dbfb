"""The chat template an SFT run formats its prompts with, and the one a pretraining run saves.

SFT needs a template. The model's own comes first. A model without one may be an adapter on a base
that has one (``smol-a2d``: a pretraining adapter on SmolLM2-Instruct), so the adapter chain's
bases are asked next. Only then dlm's own template (:data:`dlm.models.default.CHAT_TEMPLATE`), and
only for a tokenizer that has its role tokens as single tokens: another vocabulary would cut
``<|user|>`` into pieces and train on junk, so that is refused with a message instead.

A pretraining run saves no template when it started from scratch (nothing was trained on chat
prompts) and keeps the one its ``--init`` model had (an instruct base stays usable with its own
format).
"""

from __future__ import annotations

from pathlib import Path

from dlm.errors import DLMError

DLM_ROLE_TOKENS = ("<|user|>", "<|assistant|>", "<|eot|>")


def inherited_chat_template(init: str | None) -> tuple[str, str] | None:
    """(template, the model it comes from) of the nearest base of the adapter ``init`` with one."""
    from dlm.models.adapters import is_adapter_dir, read_adapter_meta
    from dlm.models.loading import _load_tokenizer
    from dlm.models.locate import resolve_model_path

    if init is None:
        return None
    path = resolve_model_path(init)
    seen: set[Path] = set()
    while path.is_dir() and is_adapter_dir(path) and path not in seen:
        seen.add(path)
        base = read_adapter_meta(path)["base"]
        path = resolve_model_path(base)
        tokenizer = _load_tokenizer(path) if path.is_dir() else None
        template = getattr(tokenizer, "chat_template", None)
        if template:
            return template, base
    return None


def has_dlm_role_tokens(tokenizer) -> bool:
    vocab = tokenizer.get_vocab()
    return all(token in vocab for token in DLM_ROLE_TOKENS)


def sft_chat_template(tokenizer, init: str | None) -> tuple[str, str | None]:
    """(template, a note for the user or None) for an SFT run on a model with ``tokenizer``."""
    from dlm.models.default import CHAT_TEMPLATE

    own = getattr(tokenizer, "chat_template", None)
    if own:
        return own, None
    inherited = inherited_chat_template(init)
    if inherited is not None:
        return inherited[0], (f"dlm train: the model's tokenizer has no chat template; SFT uses the template of its "
                              f"base {inherited[1]} and saves it with the model")
    if has_dlm_role_tokens(tokenizer):
        return CHAT_TEMPLATE, ("dlm train: the model's tokenizer has no chat template (a base model); SFT formats "
                               "prompts with dlm's template and saves it with the model")
    raise DLMError("SFT formats prompts with a chat template, and this model's tokenizer has none (nor has its base), "
                   f"while dlm's own template needs the tokens {', '.join(DLM_ROLE_TOKENS)}, which its vocabulary "
                   "lacks; add the model's chat template (chat_template.jinja in its directory)")
