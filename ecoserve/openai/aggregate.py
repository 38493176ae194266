"""A non-streaming response assembled from streamed chunks.

The coordinator streams every request from the engine, also when the client
asked for one JSON reply, so it sees each token as it is made (the policy
needs first-token times and decode progress). This folds the chunks back into
the reply the engine would have sent: texts and contents concatenate, lists
(token ids, logprobs) extend, tool-call fragments merge by their index, and
scalars (finish_reason, role, ids) take the latest value.
"""

from __future__ import annotations

from typing import Any

# Keys whose value is replaced, not concatenated, when a later chunk repeats them.
_REPLACE = frozenset({"role", "finish_reason", "stop_reason", "index", "id", "type", "name", "object", "model"})


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for key, value in src.items():
        cur = dst.get(key)
        if value is None:
            dst.setdefault(key, None)
        elif cur is None:
            dst[key] = _copy(value)
        elif key in _REPLACE:
            dst[key] = value
        elif isinstance(value, str) and isinstance(cur, str):
            dst[key] = cur + value
        elif key == "tool_calls" and isinstance(value, list) and isinstance(cur, list):
            _merge_indexed(cur, value)
        elif isinstance(value, list) and isinstance(cur, list):
            cur.extend(value)
        elif isinstance(value, dict) and isinstance(cur, dict):
            _merge(cur, value)
        else:
            dst[key] = value


def _merge_indexed(dst: list[dict[str, Any]], src: list[dict[str, Any]]) -> None:
    for item in src:
        idx = item.get("index")
        target = next((d for d in dst if d.get("index") == idx), None) if idx is not None else None
        if target is None:
            dst.append(_copy(item))
        else:
            _merge(target, item)


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


class ResponseBuilder:
    """Feed decoded chunks in order; ``result()`` gives the non-streaming reply."""

    def __init__(self, kind: str) -> None:
        if kind not in ("completions", "chat"):
            raise ValueError(f"kind must be 'completions' or 'chat', got {kind!r}")
        self.kind = kind
        self._top: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self._usage: dict[str, Any] | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        for key, value in chunk.items():
            if key == "choices":
                for choice in value or ():
                    self._add_choice(choice)
            elif key == "usage":
                if value is not None:
                    self._usage = value
            elif key != "object":
                _merge(self._top, {key: value})

    def _add_choice(self, choice: dict[str, Any]) -> None:
        idx = choice.get("index", 0)
        if self.kind == "chat" and "delta" in choice:
            choice = dict(choice)
            choice["message"] = choice.pop("delta") or {}
        dst = self._choices.setdefault(idx, {"index": idx})
        _merge(dst, choice)

    def result(self) -> dict[str, Any]:
        out = dict(self._top)
        out["object"] = "chat.completion" if self.kind == "chat" else "text_completion"
        choices = []
        for idx in sorted(self._choices):
            c = self._choices[idx]
            if self.kind == "chat":
                msg = c.setdefault("message", {})
                msg.setdefault("role", "assistant")
                msg.setdefault("content", None)
                if not msg.get("tool_calls"):
                    msg.pop("tool_calls", None)
            else:
                c.setdefault("text", "")
            c.setdefault("logprobs", None)
            c.setdefault("finish_reason", None)
            choices.append(c)
        out["choices"] = choices
        out["usage"] = self._usage
        return out
