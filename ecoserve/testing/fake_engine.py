"""A stand-in for a vLLM engine with the EcoServe plugin, for tests and benchmarks.

It speaks the subset of the engine's HTTP surface the coordinator uses:
``/health``, ``/v1/models``, ``/tokenize``, ``/ecoserve/status``,
``/ecoserve/phase`` and streaming ``/v1/completions`` / ``/v1/chat/completions``
(with ``usage`` on every chunk when asked), and optionally publishes status
pushes with prefill step records over ZeroMQ. It honours phases the way the
plugin does: in ``decode`` nothing new starts, in ``prefill`` started requests
pause. Every prompt word is a token, every output token is the text " tok".

    python -m ecoserve.testing.fake_engine --port 8100               # as fast as it can
    python -m ecoserve.testing.fake_engine --port 8100 --token-interval 0.01
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
import uuid
from typing import Any

import msgspec
from aiohttp import web

from ecoserve.protocol import EngineAddresses, EngineStatus, StepRecord, encode

_dec = msgspec.json.Decoder()
_enc = msgspec.json.Encoder()


def _error(status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "BadRequestError", "param": None, "code": status}}
    return web.Response(status=status, body=_enc.encode(body), content_type="application/json")


class FakeEngine:
    def __init__(
        self,
        *,
        model: str = "fake-model",
        max_model_len: int = 4096,
        kv_blocks: int = 1024,
        block_size: int = 16,
        token_interval: float = 0.0,
        prefill_delay: float = 0.0,
        write_batch: int = 64,
        publish: bool = True,
        honour_phases: bool = True,
        phase: str = "temporal",
        decode_steps: bool = False,
    ) -> None:
        """``decode_steps``: also publish a decode step record per token
        interval of each stream, or per write when streaming as fast as it
        can (what a dashboard draws as decode)."""
        self.model = model
        self.max_model_len = max_model_len
        self.kv_blocks, self.block_size = kv_blocks, block_size
        self.token_interval = token_interval
        self.prefill_delay = prefill_delay
        self.write_batch = write_batch
        self.publish = publish
        self.honour_phases = honour_phases
        self.decode_steps = decode_steps
        self.phase = phase
        self.phase_log: list[str] = []  # every phase commanded, in order
        self.step_budgets: list[int | None] = []  # each command's step_budget, in the same order
        self.requests: list[dict[str, Any]] = []  # bodies received
        self.arrivals: list[float] = []  # time.monotonic() at each body's receipt, in the same order
        self.aborted = 0  # streams whose client went away before the end
        self.finished = 0
        self.running = 0  # started, not finished
        self.waiting = 0  # received, no first token yet
        self._seq = itertools.count(1)
        self._step = itertools.count(1)
        self._phase_changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._pub = None
        self._status_address: str | None = None
        self.url = ""

    # ---- lifecycle -----------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application()
        app.add_routes(
            [
                web.get("/health", self._health),
                web.get("/v1/models", self._models),
                web.post("/tokenize", self._tokenize),
                web.get("/ecoserve/status", self._status),
                web.post("/ecoserve/phase", self._set_phase),
                web.post("/v1/completions", self._completions),
                web.post("/v1/chat/completions", self._chat),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.url = f"http://{host}:{sock.getsockname()[1]}"
        if self.publish:
            import zmq
            import zmq.asyncio

            self._pub = zmq.asyncio.Context.instance().socket(zmq.PUB)
            self._pub.setsockopt(zmq.LINGER, 0)
            self._status_address = f"tcp://{host}:{self._pub.bind_to_random_port(f'tcp://{host}')}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._pub is not None:
            self._pub.close(0)
            self._pub = None

    # ---- status ----------------------------------------------------------------
    def status(self, steps: list[StepRecord] | None = None) -> EngineStatus:
        now = time.time()
        return EngineStatus(
            engine_id="fake", seq=next(self._seq), time=now, phase=self.phase, phase_since=now,  # type: ignore[arg-type]
            activity="idle", activity_since=now, step=0, num_waiting=self.waiting, num_prefilling=0,
            num_decoding=self.running, kv_blocks_free=self.kv_blocks, kv_blocks_total=self.kv_blocks,
            block_size=self.block_size, max_num_seqs=256, max_num_batched_tokens=8192, steps=steps or [],
            addresses=EngineAddresses(status=self._status_address, command="") if self._status_address else None,
        )  # fmt: skip

    async def _push(self, steps: list[StepRecord]) -> None:
        if self._pub is not None:
            await self._pub.send(encode(self.status(steps)))

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def _models(self, request: web.Request) -> web.Response:
        card = {"id": self.model, "object": "model", "root": self.model, "max_model_len": self.max_model_len}
        return web.json_response({"object": "list", "data": [card]})

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = _dec.decode(await request.read())
        if "messages" in body:
            n = sum(len(str(m.get("content", "")).split()) + 2 for m in body["messages"])
        else:
            n = len(str(body.get("prompt", "")).split())
        return web.json_response({"count": n, "max_model_len": self.max_model_len, "tokens": list(range(n))})

    async def _status(self, request: web.Request) -> web.Response:
        return web.Response(body=encode(self.status()), content_type="application/json")

    async def _set_phase(self, request: web.Request) -> web.Response:
        body = _dec.decode(await request.read())
        phase = body.get("phase")
        if phase not in ("temporal", "prefill", "decode", "mixed", "chunked"):
            return web.Response(
                status=400, body=b'{"type": "error", "error": "bad phase"}', content_type="application/json"
            )
        self.phase = phase
        self.phase_log.append(phase)
        self.step_budgets.append(body.get("step_budget"))
        self._phase_changed.set()
        self._phase_changed = asyncio.Event()
        return web.Response(body=encode(self.status()), content_type="application/json")

    async def _wait_phase(self, started: bool) -> None:
        if not self.honour_phases:
            return
        blocked = "prefill" if started else "decode"
        while self.phase == blocked:
            await self._phase_changed.wait()

    # ---- generation ------------------------------------------------------------
    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = _dec.decode(await request.read())
        except msgspec.DecodeError:
            return _error(400, "body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "body must be an object")
        self.requests.append(body)
        self.arrivals.append(time.monotonic())
        if body.get("model") not in (None, self.model):
            return _error(404, f"The model `{body.get('model')}` does not exist.")
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 16
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return _error(400, "max_tokens must be at least 1")
        if body.get("temperature", 0) is not None and body.get("temperature", 0) < 0:
            return _error(400, "temperature must be non-negative")
        n = int(body.get("n") or 1)
        prompt_len = (
            sum(len(str(m.get("content", "")).split()) + 2 for m in body.get("messages", []))
            if chat
            else len(str(body.get("prompt", "")).split())
        )
        if not body.get("stream"):
            return _error(400, "the fake engine only streams")
        opts = body.get("stream_options") or {}
        continuous = bool(opts.get("include_usage") and opts.get("continuous_usage_stats"))
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        head = (
            f'{{"id":"{rid}","object":"{"chat.completion.chunk" if chat else "text_completion"}",'
            f'"created":{int(time.time())},"model":"{self.model}","choices":['
        ).encode()

        def chunk(i: int, done: int, text: str, finish: str | None = None) -> bytes:
            fin = f'"{finish}"' if finish else "null"
            if chat:
                choice = f'{{"index":{i},"delta":{{"content":"{text}"}},"logprobs":null,"finish_reason":{fin}}}'
            else:
                choice = f'{{"index":{i},"text":"{text}","logprobs":null,"finish_reason":{fin},"stop_reason":null}}'
            usage = (
                f',"usage":{{"prompt_tokens":{prompt_len},"total_tokens":{prompt_len + done},"completion_tokens":{done}}}'
                if continuous
                else ""
            )
            return b"data: " + head + choice.encode() + b"]" + usage.encode() + b"}\n\n"

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        self.waiting += 1
        started = False
        done = 0
        try:
            await self._wait_phase(started=False)
            if self.prefill_delay:
                await asyncio.sleep(self.prefill_delay)
            self.waiting -= 1
            self.running += 1
            started = True
            if chat:
                role = '{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}'
                await resp.write(b"data: " + head + role.encode() + b"]" + (
                    f',"usage":{{"prompt_tokens":{prompt_len},"total_tokens":{prompt_len},"completion_tokens":0}}'
                    if continuous else "").encode() + b"}\n\n")  # fmt: skip
            step = next(self._step)
            took = max(self.prefill_delay, 1e-4)
            rec = StepRecord(step, time.time() - took, took, "prefill", prompt_len, 1, 0, 0)
            await self._push([rec])
            buf: list[bytes] = []
            for t in range(max_tokens):
                if t and self.honour_phases and self.phase == "prefill":
                    if buf:  # what was made before the pause reaches the client now
                        await resp.write(b"".join(buf))
                        buf.clear()
                    await self._wait_phase(started=True)
                for i in range(n):
                    done += 1
                    last = t == max_tokens - 1
                    buf.append(chunk(i, done, " tok", "length" if last else None))
                if self.token_interval or len(buf) >= self.write_batch or t == max_tokens - 1:
                    written = len(buf)
                    t0 = time.time()
                    await resp.write(b"".join(buf))
                    buf.clear()
                    if self.decode_steps and not self.token_interval:  # as fast as it can: a step per write
                        await self._push([StepRecord(next(self._step), t0, time.time() - t0 + 1e-6, "decode", 0, 0,
                                                     written, prompt_len + done)])  # fmt: skip
                if self.token_interval:
                    t0 = time.time()
                    await asyncio.sleep(self.token_interval)
                    if self.decode_steps:
                        await self._push([StepRecord(next(self._step), t0, time.time() - t0, "decode", 0, 0, 1,
                                                     prompt_len + done)])  # fmt: skip
            if opts.get("include_usage"):
                usage = (
                    f'{{"prompt_tokens":{prompt_len},"total_tokens":{prompt_len + done},"completion_tokens":{done}}}'
                )
                await resp.write(b"data: " + head + b"]," + f'"usage":{usage}}}\n\n'.encode())
            await resp.write(b"data: [DONE]\n\n")
            self.finished += 1
        except ConnectionResetError:  # the client went away (the coordinator aborts this way)
            self.aborted += 1
            return resp
        except asyncio.CancelledError:
            self.aborted += 1
            raise
        finally:
            if started:
                self.running -= 1
            else:
                self.waiting -= 1
        return resp


class FakeEngineThread:
    """A ``FakeEngine(**kw)`` (``publish=False``) on its own event loop thread, so
    synchronous code (a CLI under test) can reach it at ``url``; ``close()`` stops it."""

    def __init__(self, **kw: Any) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.engine = FakeEngine(publish=False, **kw)
        self.url = asyncio.run_coroutine_threadsafe(self.engine.start(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.engine.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ecoserve.testing.fake_engine", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--model", default="fake-model")
    p.add_argument("--token-interval", type=float, default=0.0, help="seconds between tokens (0: as fast as it can)")
    p.add_argument("--write-batch", type=int, default=64, help="tokens per write when streaming as fast as it can")
    p.add_argument("--prefill-delay", type=float, default=0.0, help="seconds before a request's first token")
    p.add_argument("--no-phases", action="store_true", help="ignore phase commands (stream regardless)")
    p.add_argument("--decode-steps", action="store_true", help="publish a decode step record per token interval")
    args = p.parse_args(argv)

    async def run() -> None:
        fake = FakeEngine(
            model=args.model, token_interval=args.token_interval, write_batch=args.write_batch,
            honour_phases=not args.no_phases, prefill_delay=args.prefill_delay, decode_steps=args.decode_steps,
        )  # fmt: skip
        url = await fake.start(args.host, args.port)
        print(f"fake engine on {url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await fake.stop()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
