"""One engine, seen from the coordinator: its OpenAI API and its EcoServe routes.

aiohttp rather than httpx on purpose: the relay's cost per streamed read is
what bounds the coordinator's token throughput, and aiohttp hands over raw
reads (``iter_any``) with the least work per read.

Two kinds of failure are kept apart, because the coordinator reacts to them
differently:
- ``UpstreamHTTPError``: the engine answered and refused (a 4xx/5xx with a
  body); the request was wrong or the engine overloaded; the engine is fine.
- ``EngineUnreachable``: no answer (connection refused or reset, timeout); the
  engine may be dead and its requests may have to go elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec

from ecoserve.protocol import EngineStatus, ErrorReply, decode_reply

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()

# Stream requests have no total timeout (generations can be long); a connect
# that takes this long means the engine is not there.
CONNECT_TIMEOUT_S = 10.0
CONTROL_TIMEOUT_S = 10.0


class EngineUnreachable(Exception):
    """The engine did not answer (it may be dead)."""


class UpstreamHTTPError(Exception):
    """The engine answered with an error status; ``body`` is its reply as sent."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body
        super().__init__(f"engine answered HTTP {status}: {body[:300]!r}")

    def message(self) -> str:
        """The error message in the engine's (OpenAI-shaped) reply, or its text."""
        try:
            obj = _dec.decode(self.body)
            if isinstance(obj, dict):
                err = obj.get("error")
                if isinstance(err, dict) and isinstance(err.get("message"), str):
                    return err["message"]
                if isinstance(err, str):
                    return err
                if isinstance(obj.get("message"), str):
                    return obj["message"]
        except msgspec.DecodeError:
            pass
        return self.body.decode(errors="replace")[:2000] or f"HTTP {self.status}"


class UpstreamStream:
    """An open streaming response; ``reads()`` yields raw bytes as they arrive."""

    __slots__ = ("_resp",)

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp

    async def reads(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._resp.content.iter_any():
                yield data
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as e:
            raise EngineUnreachable(f"stream from the engine broke: {e!r}") from e

    def abort(self) -> None:
        """Drop the connection: vLLM aborts a request whose client went away."""
        self._resp.close()

    def release(self) -> None:
        """The stream ended normally: the connection goes back to the pool."""
        self._resp.release()


class EngineHandle:
    def __init__(self, url: str, *, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._session is None:
            # limit=0: one connection per concurrent stream, never queued here.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
                headers=self._headers,
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("EngineHandle.open() was not called")
        return self._session

    # ---- plain calls -------------------------------------------------------
    async def _call(self, method: str, path: str, body: Any = None, timeout: float = CONTROL_TIMEOUT_S) -> bytes:
        data = None if body is None else (body if isinstance(body, bytes) else _enc.encode(body))
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            async with self.session.request(
                method, self.url + path, data=data, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise UpstreamHTTPError(resp.status, raw)
                return raw
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as e:
            raise EngineUnreachable(f"{method} {self.url}{path}: {e!r}") from e

    async def health(self, timeout: float = 2.0) -> bool:
        if self._session is None or self._session.closed:
            return False
        try:
            await self._call("GET", "/health", timeout=timeout)
            return True
        except (EngineUnreachable, UpstreamHTTPError):
            return False

    async def models(self) -> list[dict[str, Any]]:
        """The engine's ``/v1/models`` cards (``id``, ``root``, ``max_model_len``...)."""
        return list(_dec.decode(await self._call("GET", "/v1/models")).get("data") or [])

    async def status(self) -> EngineStatus:
        return self._status(await self._ecoserve("GET", "/ecoserve/status"))

    async def set_phase(self, phase: str, lease_s: float | None = None, step_budget: int | None = None) -> EngineStatus:
        """``lease_s``: the engine falls back to its startup phase unless the
        next phase command (a renewal) comes within that many seconds.
        ``step_budget`` (``chunked``): tokens per step, decodes included."""
        body: dict[str, Any] = {"phase": phase}
        if lease_s is not None:
            body["lease_s"] = lease_s
        if step_budget is not None:
            body["step_budget"] = step_budget
        return self._status(await self._ecoserve("POST", "/ecoserve/phase", body))

    async def _ecoserve(self, method: str, path: str, body: Any = None) -> bytes:
        try:
            return await self._call(method, path, body)
        except UpstreamHTTPError as e:
            if e.status == 404:
                raise UpstreamHTTPError(
                    404,
                    b'{"error": {"message": "no /ecoserve routes: start the engine with VLLM_PLUGINS=ecoserve"}}',
                ) from e
            raise

    @staticmethod
    def _status(raw: bytes) -> EngineStatus:
        reply = decode_reply(raw)
        if isinstance(reply, ErrorReply):
            raise UpstreamHTTPError(400, raw)
        return reply

    async def tokenize(self, body: dict[str, Any]) -> list[int]:
        """The token ids of a prompt or chat (``/tokenize`` takes either)."""
        tokens = _dec.decode(await self._call("POST", "/tokenize", body)).get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise ValueError(f"/tokenize answered {type(tokens).__name__}, not a list of token ids")
        return tokens

    # ---- streaming ---------------------------------------------------------
    async def open_stream(self, path: str, body: bytes) -> UpstreamStream:
        """POST a streaming request; returns once the engine accepted it (HTTP
        200), raises UpstreamHTTPError if it refused, EngineUnreachable if no
        answer came."""
        try:
            resp = await self.session.post(self.url + path, data=body, headers={"Content-Type": "application/json"})
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as e:
            raise EngineUnreachable(f"POST {self.url}{path}: {e!r}") from e
        if resp.status != 200:
            try:
                raw = await resp.read()
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
                raw = b""
            finally:
                resp.release()
            raise UpstreamHTTPError(resp.status, raw)
        return UpstreamStream(resp)
