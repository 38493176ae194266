"""Reading the token progress out of an engine's streamed chunks.

The coordinator always asks the engine for ``stream_options: {include_usage,
continuous_usage_stats}``: every chunk then carries the request's cumulative
``usage.completion_tokens``, an exact token count even when one chunk holds
several tokens (n > 1, held-back stop strings, partial UTF-8). A chunk is
decoded into a minimal view (msgspec skips every other field), so reading the
progress costs about a microsecond a chunk.

What the client asked for is restored on the way out: the per-chunk usage is
removed unless it asked for ``continuous_usage_stats``, the final usage-only
chunk is dropped unless it asked for ``include_usage`` (many clients index
``chunk.choices[0]`` and would fail on an empty list). ``ModelRename`` puts
the served model name in place of the engines' own.
"""

from __future__ import annotations

from typing import Any

import msgspec

DONE = b"[DONE]"


class _Usage(msgspec.Struct):
    completion_tokens: int = 0


class _ChunkView(msgspec.Struct):
    choices: list[msgspec.Raw] | None = None
    usage: _Usage | None = None
    error: Any = None  # rare: decoded in full


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None


class _ChoiceView(msgspec.Struct):
    text: str | None = None
    delta: _Delta | None = None
    token_ids: list[int] | None = None


_view = msgspec.json.Decoder(_ChunkView)
_choices = msgspec.json.Decoder(list[_ChoiceView])
_any = msgspec.json.Decoder()
_enc = msgspec.json.Encoder()
_USAGE_KEY = b',"usage":{'


def strip_usage(payload: bytes) -> bytes:
    """``payload`` without its ``usage`` member. vLLM writes usage as a flat
    object after ``choices``; anything else takes the slow, exact path."""
    i = payload.find(_USAGE_KEY)
    if i >= 0:
        j = payload.find(b"}", i + len(_USAGE_KEY))
        if j >= 0 and b"{" not in payload[i + len(_USAGE_KEY) : j]:
            return payload[:i] + payload[j + 1 :]
    obj = _any.decode(payload)
    obj.pop("usage", None)
    return _enc.encode(obj)


def _fallback_count(choices: list[msgspec.Raw]) -> int:
    """Tokens in a chunk from an upstream that sends no usage: one per choice
    that carries output (vLLM sends one token per chunk and choice)."""
    n = 0
    for c in _choices.decode(b"[" + b",".join(bytes(r) for r in choices) + b"]"):
        if c.token_ids:
            n += len(c.token_ids)
        elif c.text or (c.delta is not None and (c.delta.content or c.delta.reasoning_content)):
            n += 1
    return n


class StreamTally:
    """One request's upstream stream: counts its tokens, filters its chunks."""

    __slots__ = ("keep_usage", "keep_continuous", "tokens", "done", "error", "_counted_fallback")

    def __init__(self, *, keep_usage: bool, keep_continuous: bool) -> None:
        self.keep_usage = keep_usage  # forward the final usage-only chunk
        self.keep_continuous = keep_continuous  # forward usage on every chunk
        self.tokens = 0  # cumulative output tokens so far
        self.done = False  # saw [DONE]
        self.error: bytes | None = None  # an in-stream error chunk, if any
        self._counted_fallback = 0

    def process(self, payloads: list[bytes]) -> list[bytes]:
        """The payloads to forward, in order; updates ``tokens``/``done``/``error``."""
        out: list[bytes] = []
        for p in payloads:
            if p == DONE:
                self.done = True
                continue
            try:
                view = _view.decode(p)
            except (msgspec.DecodeError, msgspec.ValidationError):
                out.append(p)  # not ours to judge: pass it on untouched
                continue
            if view.error is not None:
                self.error = p
                out.append(p)
                continue
            if view.usage is not None:
                self.tokens = max(self.tokens, view.usage.completion_tokens)
                if not view.choices:  # the final usage-only chunk
                    if self.keep_usage:
                        out.append(p)
                    continue
                out.append(p if self.keep_continuous else strip_usage(p))
            else:
                if view.choices:
                    self._counted_fallback += _fallback_count(view.choices)
                    self.tokens = max(self.tokens, self._counted_fallback)
                out.append(p)
        return out


class ModelRename:
    """Rewrites a chunk's top-level ``model``: the engines serve under their
    own name, clients see another (``--served-model-name``). vLLM writes
    compact JSON with ``model`` before ``choices``, so the first
    ``"model":"<engine name>"`` is the top-level one (inside a JSON string a
    quote is always escaped, so text cannot match); a chunk written any other
    way takes the slow, exact path."""

    __slots__ = ("engine_name", "served_name", "_old", "_new")

    def __init__(self, engine_name: str, served_name: str) -> None:
        self.engine_name = engine_name
        self.served_name = served_name
        self._old = b'"model":' + _enc.encode(engine_name)
        self._new = b'"model":' + _enc.encode(served_name)

    def __call__(self, payload: bytes) -> bytes:
        if self._old in payload:
            return payload.replace(self._old, self._new, 1)
        if b'"model"' not in payload:
            return payload
        try:
            obj = _any.decode(payload)
        except msgspec.DecodeError:
            return payload
        if not isinstance(obj, dict) or obj.get("model") != self.engine_name:
            return payload
        obj["model"] = self.served_name
        return _enc.encode(obj)
