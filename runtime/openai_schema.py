"""Request bodies of the OpenAI-compatible API (pydantic), and the mapping of their fields to sampling.

Fields the API has and this server does not honour are refused with a 400 naming them (``n`` > 1,
``logprobs``, ``best_of`` > 1, ``echo``, ``suffix``, ``tools``); fields it does not know are ignored,
as llama.cpp's server and Ollama do (clients send ``user``, ``logit_bias`` and the like). Beyond
the API, ``top_k``, ``min_p``, ``repetition_penalty`` and ``ignore_eos`` are taken as llama.cpp takes them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .sampling import SamplingConfig

# the API's defaults: temperature 1, top_p 1 (sampling); completions stop after 16 tokens
COMPLETION_MAX_TOKENS = 16


class UnsupportedFieldError(ValueError):
    """A request field the API defines but this server does not implement (a 400 naming it)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampled(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0, lt=2**64)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    n: int | None = Field(default=None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # llama.cpp's extras
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, lt=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    ignore_eos: bool = False  # keep generating past the eos token (benchmarks)

    def sampling(self) -> SamplingConfig:
        def pick(value: Any, default: Any) -> Any:
            return default if value is None else value

        return SamplingConfig(
            temperature=pick(self.temperature, 1.0), top_p=pick(self.top_p, 1.0), top_k=pick(self.top_k, 0),
            min_p=pick(self.min_p, 0.0), repetition_penalty=pick(self.repetition_penalty, 1.0),
            presence_penalty=pick(self.presence_penalty, 0.0), frequency_penalty=pick(self.frequency_penalty, 0.0),
            seed=self.seed,
        )

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise UnsupportedFieldError("stop", f"stop takes at most 4 strings, got {len(stops)}")
        return [s for s in stops if s]

    def check_supported(self) -> None:
        if self.n not in (None, 1):
            raise UnsupportedFieldError("n", "n > 1 is not supported: send one request per completion")

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_Sampled):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def check_supported(self) -> None:
        super().check_supported()
        for name, bad in (("echo", self.echo), ("logprobs", self.logprobs is not None),
                          ("best_of", self.best_of not in (None, 1)), ("suffix", bool(self.suffix))):
            if bad:
                raise UnsupportedFieldError(name, f"{name} is not supported by this server")

    def max_new_tokens(self, default: int) -> int:
        return self.max_tokens if self.max_tokens is not None else min(COMPLETION_MAX_TOKENS, default)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatRequest(_Sampled):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    logprobs: bool | None = None
    tools: list[Any] | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.logprobs:
            raise UnsupportedFieldError("logprobs", "logprobs is not supported by this server")
        if self.tools:
            raise UnsupportedFieldError("tools", "tools are not supported by this server")

    def max_new_tokens(self, default: int) -> int:
        for value in (self.max_completion_tokens, self.max_tokens):
            if value is not None:
                return value
        return default
