"""Request bodies of the OpenAI routes: validated here, published in the OpenAPI schema.

Only the fields the coordinator relies on (or that are cheap to check before
a request waits in a queue) are typed; every other field vLLM accepts
(``top_k``, ``min_tokens``, ``repetition_penalty``, ``logit_bias``,
``response_format``, ``tools``...) passes through untouched (``extra="allow"``)
and the engine validates it.

Typed fields are strict about JSON types (``"max_tokens": "5"``, ``true`` or
``5.0`` is refused rather than coerced) and numbers must be finite. The
server also checks every field, passed-through ones included, for what JSON
or the engine cannot carry (``validation.check_values``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationInfo, field_validator

Int = Annotated[int, Strict()]  # a JSON integer: no strings, booleans or 5.0
Bool = Annotated[bool, Strict()]  # true or false: no "yes", 1
TokenId = Annotated[int, Strict(), Field(ge=0)]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]


class _Passthrough(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class StreamOptions(_Passthrough):
    include_usage: Bool | None = None
    continuous_usage_stats: Bool | None = None


class _Sampling(_Passthrough):
    model: str | None = Field(None, description="Served model name (GET /v1/models); default: the one served.")
    n: Int = Field(1, ge=1, le=128, description="Choices per prompt.")
    stream: Bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: Int | None = Field(None, ge=-(2**63), lt=2**64)
    ignore_eos: Bool | None = Field(None, description="vLLM: keep generating past EOS (benchmarks).")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    user: str | None = None

    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(cls, v: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if v is not None and not info.data.get("stream"):
            raise ValueError("Stream options can only be defined when `stream=True`")
        return v


class CompletionRequest(_Sampling):
    prompt: str | TokenIds | Annotated[list[str], Field(min_length=1)] | Annotated[list[TokenIds], Field(min_length=1)] = Field(
        ..., description="Text, token ids, or a batch of either."
    )
    max_tokens: Int | None = Field(16, ge=1, description="Output tokens per choice (default 16, as OpenAI).")
    logprobs: Int | None = Field(None, ge=0)
    echo: Bool | None = None
    suffix: str | None = None


class ContentPart(_Passthrough):
    type: str = Field(..., description="text, image_url, input_audio, ... (the engine checks the rest).")


class ChatMessage(_Passthrough):
    role: str
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: Int | None = Field(None, ge=1, description="Deprecated by OpenAI; use max_completion_tokens.")
    max_completion_tokens: Int | None = Field(None, ge=1)
    logprobs: Bool | None = None
    top_logprobs: Int | None = Field(None, ge=0)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ecoserve"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
