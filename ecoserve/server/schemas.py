"""Request bodies of the OpenAI routes: validated here, published in the OpenAPI schema.

Only the fields the coordinator relies on (or that are cheap to check before
a request waits in a queue) are typed; every other field vLLM accepts
(``top_k``, ``min_tokens``, ``repetition_penalty``, ``logit_bias``,
``response_format``, ``tools``...) passes through untouched (``extra="allow"``)
and the engine validates it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Passthrough(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Passthrough):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class _Sampling(_Passthrough):
    model: str | None = Field(None, description="Served model name (GET /v1/models); default: the one served.")
    n: int = Field(1, ge=1, le=128, description="Choices per prompt.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    ignore_eos: bool | None = Field(None, description="vLLM: keep generating past EOS (benchmarks).")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    user: str | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str] | list[list[int]] = Field(
        ..., description="Text, token ids, or a batch of either."
    )
    max_tokens: int | None = Field(16, ge=1, description="Output tokens per choice (default 16, as OpenAI).")
    logprobs: int | None = Field(None, ge=0)
    echo: bool | None = None
    suffix: str | None = None


class ChatMessage(_Passthrough):
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="Deprecated by OpenAI; use max_completion_tokens.")
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0)


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
