"""The front door: an OpenAI-compatible API over the coordinator (FastAPI).

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (streaming
and not), ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus),
``GET /ecoserve/status``; the OpenAPI schema at ``/openapi.json``, docs at
``/docs``. With an API key, ``/v1/*`` and ``/ecoserve/*`` need
``Authorization: Bearer KEY``; ``/health`` and ``/metrics`` stay open (load
balancers and scrapers).
"""

from __future__ import annotations

import hmac
import time
from typing import Any

import msgspec
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ecoserve import __version__
from ecoserve.coordinator import CHAT, COMPLETIONS, Coordinator, RequestError
from ecoserve.server import errors
from ecoserve.server.metrics import CONTENT_TYPE, Metrics
from ecoserve.server.relay import ClientGone, DisconnectWatcher, SSEResponse
from ecoserve.server.schemas import ChatCompletionRequest, CompletionRequest, ErrorResponse, ModelCard, ModelList

_enc = msgspec.json.Encoder()
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 401, 404, 429, 502, 503)}
_STREAM_DOC = {"200": {"content": {"text/event-stream": {}, "application/json": {}},
                       "description": "A JSON reply, or server-sent events when `stream` is true."}}  # fmt: skip


def _auth(api_key: str | None):
    expected = f"Bearer {api_key}".encode() if api_key else None

    async def check(request: Request) -> None:
        if expected is None:
            return
        got = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(got, expected):
            raise RequestError(401, "invalid or missing API key (Authorization: Bearer KEY)", "AuthenticationError")

    return check


def create_app(coord: Coordinator, *, api_key: str | None = None) -> FastAPI:
    app = FastAPI(
        title="EcoServe",
        version=__version__,
        description="OpenAI-compatible API over vLLM engines scheduled by EcoServe "
        "(temporal disaggregation, rolling activation, SLO-aware routing).",
    )
    metrics = Metrics(coord)
    errors.install(app, count=lambda outcome: metrics.requests.labels(outcome).inc())
    coord.observer = metrics
    app.state.coordinator = coord
    app.state.metrics = metrics
    auth = [Depends(_auth(api_key))]
    started = int(time.time())

    async def serve(request: Request, kind: str, body: dict[str, Any]) -> Any:
        watcher = DisconnectWatcher(request.receive)
        try:
            gen = await watcher.run(coord.open(kind, body))
        except ClientGone:
            watcher.stop()
            return Response(status_code=499)  # nobody reads it; nginx's "client closed request"
        except BaseException:
            watcher.stop()
            raise
        if body.get("stream"):
            return SSEResponse(gen, watcher)
        try:
            reply = await watcher.run(gen.result())
        except ClientGone:
            return Response(status_code=499)
        finally:
            watcher.stop()
            await gen.aclose()
        return Response(_enc.encode(reply), media_type="application/json")

    @app.post("/v1/completions", dependencies=auth, responses={**_ERRORS, **_STREAM_DOC}, tags=["openai"])
    async def completions(req: CompletionRequest, request: Request) -> Any:
        """Text completion, as OpenAI's and vLLM's (extra sampling fields pass through)."""
        return await serve(request, COMPLETIONS, req.model_dump(exclude_unset=True))

    @app.post("/v1/chat/completions", dependencies=auth, responses={**_ERRORS, **_STREAM_DOC}, tags=["openai"])
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
        """Chat completion, as OpenAI's and vLLM's (extra sampling fields pass through)."""
        return await serve(request, CHAT, req.model_dump(exclude_unset=True))

    @app.get("/v1/models", dependencies=auth, response_model=ModelList, tags=["openai"])
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=coord.served_model, created=started, root=coord.model_path or coord.served_model,
                                         max_model_len=coord.max_model_len or None)])  # fmt: skip

    @app.get("/health", tags=["ops"])
    async def health() -> Response:
        """200 while at least one engine serves; 503 otherwise."""
        ok = any(i["healthy"] for i in coord.status()["instances"])
        return Response(status_code=200 if ok else 503)

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/ecoserve/status", dependencies=auth, tags=["ecoserve"])
    async def status() -> JSONResponse:
        """Policy, SLOs, the pending queue and every engine (id, url, phase,
        num_running, num_waiting, macro_instance, ...)."""
        return JSONResponse(coord.status())

    return app
