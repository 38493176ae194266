"""The front door: an OpenAI-compatible API over the coordinator (FastAPI).

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (streaming
and not), ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus),
``GET /ecoserve/status``, the admin routes (``admin.py``), the dashboard and
its timeline routes (``dashboard.py``); the OpenAPI schema at ``/openapi.json``,
docs at ``/docs`` (``docs.py``). With an API key, ``/v1/*`` and ``/ecoserve/*``
need ``Authorization: Bearer KEY``, except the dashboard's page, which holds
no data and asks for the key; ``/health``, ``/metrics`` and ``/docs`` stay open
(load balancers, scrapers, people).

Nothing malformed gets past the front door: a request body must be JSON
(``Content-Type: application/json``, or none: 415 otherwise) of at most
``max_body_bytes`` (16 MiB by default: 413 otherwise), then the schemas
(``ecoserve.openai.schemas``) and ``check_values`` (``ecoserve.openai.validation``,
the Python API's check too) validate every field (400), and the
coordinator checks the model name (404) and the lengths against the model's
context (400). Every refusal is OpenAI's error JSON (``errors.py``).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ecoserve import __version__
from ecoserve.live import CHAT, COMPLETIONS, Coordinator, Observers, RequestError
from ecoserve.server import errors
from ecoserve.live.timeline import LiveTimeline
from ecoserve.server.admin import admin_router
from ecoserve.server.cors import CorsSettings, add_cors
from ecoserve.server.dashboard import dashboard_router
from ecoserve.server.docs import install_docs
from ecoserve.server.metrics import CONTENT_TYPE, Metrics
from ecoserve.server.relay import ClientGone, DisconnectWatcher, SSEResponse, engine_header
from ecoserve.server.retry_after import RetryAdvisor
from ecoserve.openai.schemas import ChatCompletionRequest, CompletionRequest, ErrorResponse, ModelCard, ModelList
from ecoserve.openai.validation import check_values

_enc = msgspec.json.Encoder()
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 401, 404, 429, 502, 503)}
_ERRORS.update({code: {"model": ErrorResponse} for code in (413, 415)})
MAX_BODY_BYTES = 16 << 20  # 16 MiB: a 128k-token prompt as text is ~0.5 MiB; as JSON token ids ~1 MiB
_STREAM_DOC = {"200": {"content": {"text/event-stream": {}, "application/json": {}},
                       "description": "A JSON reply, or server-sent events when `stream` is true."}}  # fmt: skip


def _auth(api_key: str | Sequence[str] | None):
    keys = [api_key] if isinstance(api_key, str) else list(api_key or ())  # several: vLLM's --api-key K1 K2
    expected = [f"Bearer {k}".encode() for k in keys if k]

    async def check(request: Request) -> None:
        if not expected:
            return
        got = request.headers.get("authorization", "").encode()
        if not sum(hmac.compare_digest(got, e) for e in expected):  # every key compared: no early exit
            raise RequestError(401, "invalid or missing API key (Authorization: Bearer KEY)", "AuthenticationError")

    return check


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class BodyGuard:
    """ASGI middleware in front of every route with a body: refuses a body that
    is not JSON (415) or larger than ``max_body_bytes`` (413, before reading
    more than that), then replays the body it read to the app. A request with
    no Content-Type is taken as JSON (curl --data-binary, simple clients),
    unless it comes from a browser (an ``Origin`` header): a page on another
    site may send an untyped body without a CORS preflight."""

    def __init__(self, app: Any, max_body_bytes: int = MAX_BODY_BYTES,
                 count: Callable[[str], None] = lambda outcome: None) -> None:  # fmt: skip
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.count = count

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers", ())}
        ctype = headers.get(b"content-type", b"").decode("latin-1")
        if ctype and not _is_json(ctype):
            return await self._refuse(scope, receive, send, 415, f"Unsupported Content-Type {ctype!r}: "
                                      "the request body must be JSON (Content-Type: application/json).")  # fmt: skip
        if not ctype and b"origin" in headers:
            # A browser sends an untyped body cross-origin without a CORS preflight:
            # taken as JSON, any web page could POST to a keyless server on localhost.
            return await self._refuse(scope, receive, send, 415, "A request from a browser (with an Origin header) "
                                      "must say Content-Type: application/json.")  # fmt: skip
        limit = self.max_body_bytes
        too_big = f"The request body is larger than the server accepts ({limit} bytes)."
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return await self._refuse(scope, receive, send, 400, "Invalid Content-Length header.")
            if size > limit:
                return await self._refuse(scope, receive, send, 413, too_big)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await self._refuse(scope, receive, send, 413, too_big)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if not ctype:
            scope = {**scope, "headers": [*scope.get("headers", ()), (b"content-type", b"application/json")]}
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: http.disconnect (relay.DisconnectWatcher)

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Any, receive: Any, send: Any, status: int, message: str) -> None:
        self.count("client_error")
        await errors.error_response(status, message)(scope, receive, send)


def create_app(coord: Coordinator, *, api_key: str | Sequence[str] | None = None, max_body_bytes: int = MAX_BODY_BYTES,
               cors: CorsSettings | None = None) -> FastAPI:  # fmt: skip
    """The app. ``max_body_bytes``: the largest request body accepted (413
    beyond); ``api_key``: one key or several; ``cors``: cross-origin access (none by default)."""
    app = FastAPI(
        title="EcoServe",
        docs_url=None,  # our own /docs, without a CDN (docs.py)
        redoc_url=None,
        version=__version__,
        description="OpenAI-compatible API over vLLM engines scheduled by EcoServe "
        "(temporal disaggregation, rolling activation, SLO-aware routing).",
    )
    metrics = Metrics(coord)
    def count(outcome: str) -> None:
        metrics.requests.labels(outcome).inc()

    advisor = RetryAdvisor(metrics)
    timeline = LiveTimeline(coord)
    errors.install(app, count=count, retry_after=lambda: advisor.seconds(coord.max_pending))
    app.add_middleware(BodyGuard, max_body_bytes=max_body_bytes, count=count)
    add_cors(app, cors)  # after BodyGuard: outside it
    # The server's metrics observe beside whatever observer a Python-API user gave.
    # ... and the dashboard's timeline beside both.
    coord.observer = Observers(coord.observer, advisor, timeline)
    app.state.coordinator = coord
    app.state.metrics = metrics
    app.state.timeline = timeline
    app.state.draining = False  # set by `ecoserve serve` on SIGTERM
    app.state.stopping = False  # set by `ecoserve serve` as the server stops: event streams end
    auth = [Depends(_auth(api_key))]
    started = int(time.time())

    async def serve(request: Request, kind: str, body: dict[str, Any]) -> Any:
        try:
            check_values(body)
        except RequestError:
            count("client_error")
            raise
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
            served_by = dict((k.decode(), v.decode()) for k, v in engine_header(gen))
        except ClientGone:
            return Response(status_code=499)
        finally:
            watcher.stop()
            await gen.aclose()
        return Response(_enc.encode(reply), media_type="application/json", headers=served_by)

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
        root = coord.model_path or coord.engine_model  # one card per served name, as vLLM lists them
        return ModelList(data=[ModelCard(id=name, created=started, root=root, max_model_len=coord.max_model_len or None)
                               for name in coord.model_names])  # fmt: skip

    @app.get("/health", tags=["ops"])
    async def health() -> Response:
        """200 while at least one engine serves; 503 otherwise, and from the
        start of a graceful shutdown (``app.state.draining``), so load
        balancers stop sending before the server goes away."""
        if app.state.draining:
            return errors.error_response(503, "the server is shutting down")
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

    app.include_router(admin_router(coord, _auth(api_key)))
    app.include_router(dashboard_router(timeline, _auth(api_key)))
    install_docs(app)
    return app
