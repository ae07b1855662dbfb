"""The OpenAI-compatible request bodies, validated, and what they mean for the engine.

OpenAI's fields that dlm implements: ``model``, ``prompt`` (a string, or token ids) / ``messages``,
``max_tokens`` (``max_completion_tokens``) -> ``gen_length``, ``temperature``, ``top_p``, ``seed``,
``stop``, ``stream``, ``stream_options``. Fields it cannot honour (``n`` > 1, ``logprobs``,
penalties, ``logit_bias``, ...) are refused unless they hold their neutral value; unknown fields
are refused - nothing is silently ignored.

Diffusion options go in the extra field ``dlm`` (with the ``openai`` client:
``extra_body={"dlm": {...}}``): ``sampler`` plus any of the sampler's options as ``dlm.generate``
takes them (``steps``, ``block_length``, ``threshold``, ``stride``, ``cache``, ...), and
``canvas: true`` to stream the whole canvas after every denoising step.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

from dlm.errors import DLMError

MAX_STOP = 4


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool = False


class DiffusionOptions(BaseModel):
    """The ``dlm`` extra field: the sampler, its options, and the canvas stream switch."""

    model_config = ConfigDict(extra="allow")
    sampler: str | None = None
    canvas: StrictBool = False

    def sampler_options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=100.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: StrictInt | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    n: StrictInt | None = None
    logprobs: Any = None
    top_logprobs: Any = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    dlm: DiffusionOptions = Field(default_factory=DiffusionOptions)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else v
        if stops is not None and (len(stops) > MAX_STOP or any(not s for s in stops)):
            raise ValueError(f"stop takes at most {MAX_STOP} non-empty strings")
        return v

    def stops(self) -> list[str]:
        return [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def check_supported(self) -> None:
        """Refuse OpenAI features dlm does not implement, unless they hold their neutral value."""
        if self.n not in (None, 1):
            raise DLMError("n must be 1: one completion per request (send several requests)")
        if self.logprobs not in (None, False) or self.top_logprobs not in (None, 0):
            raise DLMError("logprobs are not supported")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                raise DLMError(f"{name} is not supported (leave it out or 0)")
        if self.logit_bias:
            raise DLMError("logit_bias is not supported")
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise DLMError("give max_tokens or max_completion_tokens, not both")

    def engine_options(self, sampler_fields: set[str]) -> dict[str, Any]:
        """The sampler options this body asks for (``gen_length``, ``temperature``, ``top_p`` + ``dlm``)."""
        options = self.dlm.sampler_options()
        for name in ("seed", "stream_steps", "prompt_ids"):  # Engine.submit's own parameters, not sampler options
            if name in options:
                raise DLMError(f"dlm.{name} is not a sampler option" + (": give the body's seed" if name == "seed" else ""))
        length = self.max_tokens if self.max_tokens is not None else self.max_completion_tokens
        for field, value, name in (("gen_length", length, "max_tokens"), ("temperature", self.temperature, "temperature"),
                                   ("top_p", self.top_p, "top_p")):
            if value is None:
                continue
            if field in options:
                raise DLMError(f"give {name} or dlm.{field}, not both")
            if field not in sampler_fields:
                raise DLMError(f"the sampler has no option {field!r}: leave {name} out")
            options[field] = value
        return options


class CompletionRequest(_Common):
    prompt: str | list[StrictInt] | list[str]
    echo: StrictBool = False
    suffix: str | None = None
    best_of: StrictInt | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise DLMError("echo is not supported")
        if self.suffix:
            raise DLMError("suffix is not supported")
        if self.best_of not in (None, 1):
            raise DLMError("best_of must be 1")
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str):
            if len(self.prompt) != 1:
                raise DLMError("one prompt per request (send several requests)")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "developer"]
    content: str
    name: str | None = None


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)

    def chat(self) -> list[dict[str, str]]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in self.messages]
