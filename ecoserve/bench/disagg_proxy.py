"""A minimal proxy for the fully disaggregated baseline (FuDG) on stock vLLM.

Each completion goes to the prefill engine first with ``max_tokens=1`` (it
computes the prompt's KV cache, which vLLM's ``ExampleConnector`` writes to
shared storage), then to the decode engine, which loads that KV cache
instead of recomputing it and streams the answer back to the client. With
several engines of each kind, requests are spread round-robin.

    python -m ecoserve.bench.disagg_proxy --prefill URL --decode URL --port 8200

Both engines run with ``--kv-transfer-config '{"kv_connector":
"ExampleConnector", "kv_role": "kv_both", "kv_connector_extra_config":
{"shared_storage_path": DIR}}'`` (docs/ARCHITECTURE.md, "vLLM facts"). A baseline for
benchmarks, not a product: no retries and no auth.
"""

from __future__ import annotations

import argparse
import itertools
import json

import aiohttp
from aiohttp import web


class DisaggProxy:
    def __init__(self, prefill: list[str], decode: list[str]) -> None:
        if not prefill or not decode:
            raise ValueError("need at least one prefill and one decode engine")
        self.prefill = [u.rstrip("/") for u in prefill]
        self.decode = [u.rstrip("/") for u in decode]
        self._p = itertools.cycle(self.prefill)
        self._d = itertools.cycle(self.decode)
        self.session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes([web.get("/health", self._health), web.get("/v1/models", self._models),
                        web.post("/v1/completions", self._completions)])  # fmt: skip
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, app) -> None:
        # force_close: no reuse of a connection the engine closed after its keep-alive timeout
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True),
                                             timeout=aiohttp.ClientTimeout(total=None))  # fmt: skip

    async def _close(self, app) -> None:
        if self.session is not None:
            await self.session.close()

    async def _health(self, request: web.Request) -> web.Response:
        for url in self.prefill + self.decode:
            try:
                async with self.session.get(url + "/health") as r:
                    if r.status != 200:
                        return web.Response(status=503, text=f"{url} unhealthy")
            except aiohttp.ClientError:
                return web.Response(status=503, text=f"{url} unreachable")
        return web.Response(text="")

    async def _models(self, request: web.Request) -> web.Response:
        async with self.session.get(self.decode[0] + "/v1/models") as r:
            return web.Response(status=r.status, body=await r.read(), content_type="application/json")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return web.json_response({"error": {"message": "body is not JSON"}}, status=400)
        pre = {**body, "max_tokens": 1, "min_tokens": 1, "stream": False}
        pre.pop("stream_options", None)
        async with self.session.post(next(self._p) + "/v1/completions", json=pre) as r:
            if r.status != 200:
                return web.Response(status=r.status, body=await r.read(), content_type="application/json")
            await r.read()
        async with self.session.post(next(self._d) + "/v1/completions", data=raw,
                                     headers={"Content-Type": "application/json"}) as r:  # fmt: skip
            if r.status != 200 or not body.get("stream"):
                return web.Response(status=r.status, body=await r.read(), content_type="application/json")
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            async for data in r.content.iter_any():
                await resp.write(data)
            await resp.write_eof()
            return resp


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ecoserve.bench.disagg_proxy", description=__doc__.split("\n\n")[0])
    p.add_argument("--prefill", action="append", required=True, help="prefill engine URL (repeatable)")
    p.add_argument("--decode", action="append", required=True, help="decode engine URL (repeatable)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8200)
    a = p.parse_args(argv)
    web.run_app(DisaggProxy(a.prefill, a.decode).app(), host=a.host, port=a.port, access_log=None,
                print=None, handle_signals=True)  # fmt: skip


if __name__ == "__main__":
    main()
