"""A request's prompt as token ids: plain text, token ids, or chat messages through the template."""

from __future__ import annotations

from dlm.errors import DLMError


def encode_text(model, prompt) -> list[int]:
    if isinstance(prompt, list):
        return list(prompt)
    if not prompt:
        raise DLMError("the prompt is empty")
    if model.tokenizer is None:
        raise DLMError("this model has no tokenizer: send the prompt as a list of token ids")
    _check_unicode(prompt, "the prompt")
    return model.encode_prompt(prompt, chat=False)


def encode_chat(model, messages: list[dict]) -> list[int]:
    tok = model.tokenizer
    if tok is None or not getattr(tok, "chat_template", None):
        raise DLMError("this model has no chat template: use /v1/completions")
    for i, m in enumerate(messages):
        _check_unicode(m["content"], f"messages[{i}].content")
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def _check_unicode(text: str, what: str) -> None:
    """Refuse text the tokenizer cannot take: JSON can carry lone surrogates ("\\ud800"), UTF-8 cannot."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise DLMError(f"{what} is not valid Unicode (it holds a lone surrogate)") from None
