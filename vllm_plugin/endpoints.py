"""HTTP routes on the vLLM API server (``vllm.endpoint_plugins`` entry point).

- ``GET  /ecoserve/status``  -> the engine's fresh status (EngineStatus JSON),
  including the ZeroMQ addresses to subscribe to / send commands to.
- ``POST /ecoserve/phase``   body ``{"phase": "prefill"}`` (optionally with
  ``"lease_s": SECONDS``, and for ``chunked`` one of ``"prompt_budget": TOKENS``,
  ``"step_budget": TOKENS`` or ``"tpot_s": SECONDS``; see ``PhaseCommand``) -> fresh status.
- ``POST /ecoserve/command`` body: any protocol Command -> reply.
Each is one EngineCore utility call: it runs on the engine thread between
steps and wakes an idle engine. Errors come back as ErrorReply JSON (400 for a
bad command, 401 without the API key, 413 for a body over 64 KiB (not read
further), 503 when the engine cannot answer).

vLLM's ``--api-key`` middleware guards only /v1-style paths; these routes can
pause an engine, so they check the same keys themselves.
"""

from __future__ import annotations

import hashlib
import os
import secrets

import msgspec
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import Response

from ecoserve.protocol import ErrorReply, GetStatus, PhaseCommand, decode_reply, encode
from vllm_plugin import SCHEDULER_CLS
from vllm_plugin.channel import MAX_COMMAND_BYTES
from vllm_plugin.control import UTILITY_METHOD

_STATE_KEY = "ecoserve_engine_client"
_KEYS_KEY = "ecoserve_api_key_hashes"


# The body is a PhaseCommand, its "type" tag optional: {"phase": "chunked", "prompt_budget": 256}
_phase_body = msgspec.json.Decoder(PhaseCommand)


def _json(body: bytes, status_code: int = 200) -> Response:
    return Response(content=body, status_code=status_code, media_type="application/json")


async def _engine_call(request: Request, payload: bytes) -> Response:
    client = getattr(request.app.state, _STATE_KEY, None)
    if client is None:
        return _json(encode(ErrorReply(error="no engine attached to this server")), 503)
    try:
        reply = await client.engine_core.call_utility_async(UTILITY_METHOD, payload)
    except Exception as e:  # engine without the EcoServe scheduler, or engine dead
        return _json(
            encode(
                ErrorReply(
                    error=f"engine call failed ({e}); is vLLM running with --scheduler-cls {SCHEDULER_CLS}?"
                )
            ),
            503,
        )
    return _json(reply, 400 if isinstance(decode_reply(reply), ErrorReply) else 200)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


async def _authorize(request: Request) -> None:
    hashes = getattr(request.app.state, _KEYS_KEY, None)
    if not hashes:
        return
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    given = _digest(token)
    ok = False
    for expected in hashes:  # constant time, like vLLM's own check
        ok |= secrets.compare_digest(given, expected)
    if scheme.lower() != "bearer" or not ok:
        raise HTTPException(status_code=401, detail="Unauthorized")


router = APIRouter(prefix="/ecoserve", tags=["ecoserve"], dependencies=[Depends(_authorize)])


@router.get("/status")
async def get_status(request: Request) -> Response:
    return await _engine_call(request, encode(GetStatus()))


async def _read_body(request: Request) -> bytes | None:
    """The body, or None if it is larger than a command can be (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_COMMAND_BYTES:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_COMMAND_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large() -> Response:
    return _json(encode(ErrorReply(error=f"rejected command: larger than {MAX_COMMAND_BYTES} bytes")), 413)


@router.post("/phase")
async def set_phase(request: Request) -> Response:
    raw = await _read_body(request)
    if raw is None:
        return _too_large()
    try:
        body = _phase_body.decode(raw)
    except msgspec.DecodeError as e:
        return _json(encode(ErrorReply(error=f"rejected command: {e}")), 400)
    return await _engine_call(request, encode(body))


@router.post("/command")
async def command(request: Request) -> Response:
    raw = await _read_body(request)
    if raw is None:
        return _too_large()
    # Passed through as bytes: the engine decodes and validates it strictly.
    return await _engine_call(request, raw)


class EcoServeEndpoints:
    """Factory target of the ``vllm.endpoint_plugins`` entry point."""

    name = "ecoserve"
    required_tasks = ("generate",)  # needs an engine; not for the render server

    def attach_router(self, app: FastAPI) -> None:
        app.include_router(router)

    async def init_state(self, engine_client, state, args) -> None:
        setattr(state, _STATE_KEY, engine_client)
        # Same precedence as vLLM: --api-key, else VLLM_API_KEY.
        keys = [k for k in (getattr(args, "api_key", None) or [os.environ.get("VLLM_API_KEY")]) if k]
        setattr(state, _KEYS_KEY, [_digest(k) for k in keys])
