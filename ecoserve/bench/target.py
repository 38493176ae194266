"""The server under test: where it is, which model it serves, its context."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx


class TargetError(RuntimeError):
    """The server cannot be benchmarked as asked (down, wrong model, ...)."""


@dataclass(frozen=True)
class Target:
    base_url: str
    model: str  # the served model id requests name
    max_model_len: int | None  # prompt + output limit the server reports, if any
    api_key: str | None = None

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def discover(base_url: str, model: str | None, api_key: str | None = None, timeout: float = 10.0) -> Target:
    """Ask ``/v1/models`` which model is served. ``model`` may be the served id
    or a local path (the path of the model the server loaded); with one served
    model and a path, that model is used."""
    base = base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(base + "/v1/models", headers=headers, timeout=timeout)
    except httpx.HTTPError as e:
        raise TargetError(f"cannot reach {base}/v1/models: {e}") from None
    if r.status_code != 200:
        raise TargetError(f"{base}/v1/models answered {r.status_code}: {r.text[:200]}")
    cards = r.json().get("data") or []
    if not cards:
        raise TargetError(f"{base} serves no model")
    ids = [c.get("id") for c in cards]
    if model in ids:
        card = cards[ids.index(model)]
    elif model is None or (len(cards) == 1 and Path(model).expanduser().exists()):
        card = cards[0]
    else:
        raise TargetError(f"{base} serves {ids}, not {model!r}")
    mml = card.get("max_model_len")
    return Target(base, card["id"], int(mml) if mml else None, api_key)
