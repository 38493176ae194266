"""The live coordinator: an asyncio loop around the policy core.

It feeds real events into a ``Router`` (``ecoserve.policy``) and carries out
the actions it returns:

- a request arrives: count its prompt tokens, ``submit`` it; ``Routed`` opens a
  stream to that engine, ``Queued`` parks it until a later event routes it,
  ``Rejected`` answers 400;
- chunks flow back: each upstream read is relayed to the client as it
  arrives, and its token progress (``usage.completion_tokens``, which the
  coordinator always asks the engine for) goes to ``on_tokens``: the first
  call is the first token;
- the request ends (done, error, or the client went away: the upstream
  connection is dropped, so the engine aborts it): ``on_finish``;
- ``SetPhase`` becomes a phase command to the engine, sent by one task per
  engine so commands never reorder (the latest wanted phase wins);
- engines' status pushes (ZeroMQ) calibrate the prefill-time predictor from
  their prefill step records; a periodic ``tick`` re-offers what is pending;
- an engine that dies is failed in the router: requests without a first
  token go back to the queue and are re-routed (nothing lost), streaming
  ones end with an error.

Non-streaming requests are streamed from the engine too, so progress is
always known, and folded into one reply at the end.

Everything runs on one event loop thread; router calls are synchronous, so
no locks. ``Coordinator`` is also the Python API::

    async with Coordinator("path/to/model", engines=2) as coord:
        reply = await coord.generate("Hello", max_tokens=16)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ecoserve.engine.aggregate import ResponseBuilder
from ecoserve.engine.chunks import StreamTally
from ecoserve.engine.handle import EngineHandle, EngineUnreachable, UpstreamHTTPError, UpstreamStream
from ecoserve.engine.launcher import LocalEngine, build_engines, stop_engines, wait_healthy
from ecoserve.engine.resources import plan_engines
from ecoserve.engine.sse import SSESplitter
from ecoserve.engine.status_stream import StatusSubscriber
from ecoserve.engine.tokens import EngineTokenizer, LocalTokenizer, prompts_of
from ecoserve.policy import (
    POLICIES,
    SLO,
    Action,
    Drained,
    InstanceState,
    PrefillTimePredictor,
    Queued,
    Rejected,
    RequestState,
    Routed,
    SetPhase,
    make_router,
)
from ecoserve.protocol import EngineStatus

log = logging.getLogger("ecoserve.coordinator")

# The prefill-time predictor's starting model before any engine step is seen:
# 10 ms + 1 ms per prompt token. Deliberately pessimistic for small models (a
# slow prediction only makes windows smaller, never late); the engines' prefill
# step records correct it online, by a factor within [0.2, 5].
DEFAULT_PREFILL_COEFFS = (0.01, 1e-3, 0.0)
TICK_S = 0.01  # re-offer pending requests this often while any wait
HEALTH_S = 1.0  # how often engine liveness is checked
COMPLETIONS, CHAT = "completions", "chat"
_PATHS = {COMPLETIONS: "/v1/completions", CHAT: "/v1/chat/completions"}
_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


class RequestError(Exception):
    """A request that cannot be served, as an HTTP status and an OpenAI error."""

    def __init__(self, status: int, message: str, type: str = "BadRequestError", param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}}

    @classmethod
    def from_upstream(cls, e: UpstreamHTTPError) -> RequestError:
        kind = {400: "BadRequestError", 404: "NotFoundError", 422: "BadRequestError", 429: "RateLimitError"}
        return cls(e.status, e.message(), kind.get(e.status, "EngineError"))


class Observer:
    """Hooks for metrics (the server's Prometheus exporter implements them)."""

    def on_routed(self, instance_id: str, reason: str) -> None: ...

    def on_queued(self, reason: str) -> None: ...

    def on_done(self, outcome: str, ttft: float | None, tpot: float | None) -> None: ...


@dataclass(eq=False)
class EngineRecord:
    """The coordinator's view of one engine."""

    id: str
    url: str
    handle: EngineHandle
    model: str
    max_model_len: int
    kv_capacity_tokens: int
    local: LocalEngine | None = None
    initial_phase: str = "temporal"  # as found when attached
    desired_phase: str | None = None
    acked_phase: str | None = None
    observed: EngineStatus | None = None
    routed_total: int = 0
    failed: str | None = None  # why, once failed
    last_step: int = 0
    health_misses: int = 0
    phase_dirty: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task] = field(default_factory=list)


class Generation:
    """One request's life in the coordinator. Get one from ``Coordinator.open``
    (which returns once an engine accepted it), then iterate ``payloads()``
    or await ``result()``; always ``aclose()`` (idempotent)."""

    def __init__(self, coord: Coordinator, rid: str, kind: str, upstream_body: bytes, *, keep_usage: bool,
                 keep_continuous: bool, arrival: float) -> None:  # fmt: skip
        self._coord = coord
        self.id = rid
        self.kind = kind
        self._body = upstream_body
        self._keep = (keep_usage, keep_continuous)
        self.arrival = arrival
        self.instance_id: str | None = None
        self.placed = asyncio.Event()
        self.error: RequestError | None = None
        self.broken: str | None = None  # the engine died under a started stream
        self.upstream: UpstreamStream | None = None
        self.first_token_at: float | None = None
        self.tokens = 0
        self.outcome: str | None = None
        self._finished = False
        self._attempts = 0

    # ---- placement and upstream ----------------------------------------------------
    async def _place_and_open(self) -> None:
        while True:
            await self.placed.wait()
            if self.error is not None:
                raise self.error
            rec = self._coord.engines[self.instance_id]  # type: ignore[index]
            self._attempts += 1
            try:
                self.upstream = await rec.handle.open_stream(_PATHS[self.kind], self._body)
                return
            except UpstreamHTTPError as e:
                raise RequestError.from_upstream(e) from None
            except EngineUnreachable as e:
                if self._attempts >= 3:
                    raise RequestError(502, f"engine {rec.id} unreachable: {e}", "EngineError") from None
                await self._coord._engine_broke(rec, str(e))
                if self.instance_id == rec.id:  # still ours: it is alive, try again
                    continue

    async def payloads(self) -> AsyncIterator[list[bytes]]:
        """The chunks for the client (JSON payloads, without the SSE framing),
        a list per upstream read. Errors after the stream started come as an
        error chunk, as vLLM sends them."""
        coord = self._coord
        while True:
            upstream = self.upstream
            assert upstream is not None
            rec = coord.engines[self.instance_id]  # type: ignore[index]
            splitter = SSESplitter()
            tally = StreamTally(keep_usage=self._keep[0], keep_continuous=self._keep[1])
            base = self.tokens  # tokens already counted (never re-counted on a retry)
            try:
                async for data in upstream.reads():
                    payloads = splitter.feed(data)
                    if not payloads:
                        continue
                    out = tally.process(payloads)
                    if tally.tokens + base > self.tokens:
                        coord._on_tokens(self, tally.tokens + base - self.tokens)
                    if out:
                        yield out
                    if tally.done:
                        break
                if tally.error is not None:
                    self.outcome = "engine_error"
                elif tally.done:
                    self.outcome = "success"
                    upstream.release()
                    self.upstream = None
                    return
                else:
                    raise EngineUnreachable("the engine closed the stream before [DONE]")
                return
            except EngineUnreachable as e:
                if self.broken is None and self.first_token_at is None:
                    await coord._engine_broke(rec, str(e))
                    if self.instance_id != rec.id and self.error is None:  # re-routed: start over there
                        self.upstream = None
                        try:
                            await self._place_and_open()
                        except RequestError as err:
                            self.outcome = "engine_error"
                            yield [_enc.encode(err.body())]
                            return
                        continue
                self.outcome = "engine_error"
                why = self.broken or str(e)
                yield [
                    _enc.encode(RequestError(502, f"engine {rec.id} failed mid-stream: {why}", "EngineError").body())
                ]
                return

    async def result(self) -> dict[str, Any]:
        """The whole reply, as a non-streaming request gets it."""
        builder = ResponseBuilder(self.kind)
        async for batch in self.payloads():
            for p in batch:
                chunk = _dec.decode(p)
                if isinstance(chunk, dict) and "error" in chunk:
                    err = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
                    raise RequestError(
                        int(err.get("code") or 500) if str(err.get("code", "")).isdigit() else 500,
                        str(err.get("message")), str(err.get("type") or "EngineError"),
                    )  # fmt: skip
                builder.add(chunk)
        return builder.result()

    async def aclose(self, outcome: str | None = None) -> None:
        """End it: drop the upstream if still open (the engine aborts the
        request), tell the router, record the outcome. Idempotent."""
        if self._finished:
            return
        self._finished = True
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None
            if self.outcome is None:
                self.outcome = "aborted"
        self._coord._finish(self, outcome or self.outcome or "aborted")


class Coordinator:
    """Launches (``model``, ``engines``) or attaches to (``engine_urls``) vLLM
    engines running the EcoServe plugin, and serves requests across them.

    Engine arguments (``engine_args``) go to every launched engine unchanged
    (e.g. ``["--max-model-len", "2048", "--tensor-parallel-size", "2"]``).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        engines: int = 1,
        engine_urls: Sequence[str] = (),
        policy: str = "ecoserve",
        slo_ttft: float = 5.0,
        slo_tpot: float = 0.1,
        engine_args: Sequence[str] = (),
        device: str = "auto",
        log_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 600.0,
        tokenizer: str | None = None,
        prefill_coeffs: tuple[float, float, float] = DEFAULT_PREFILL_COEFFS,
        engine_api_key: str | None = None,
        max_pending: int = 10_000,
        cpu_kv_cache_gib: int | None = None,
        observer: Observer | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
        if (model is None) == (not engine_urls):
            raise ValueError("give either a model to launch engines for, or engine_urls to attach to (not both)")
        self.model_path = str(model) if model is not None else None
        self.n_engines = engines
        self.engine_urls = list(engine_urls)
        self.policy = policy
        self.slo = SLO(ttft=slo_ttft, tpot=slo_tpot)
        self.engine_args = list(engine_args)
        self.device = device
        self.log_dir = Path(log_dir) if log_dir else _default_log_dir()
        self.startup_timeout = startup_timeout
        self.tokenizer_path = tokenizer or self.model_path
        self.engine_api_key = engine_api_key
        self.max_pending = max_pending
        self.cpu_kv_cache_gib = cpu_kv_cache_gib
        self.observer = observer or Observer()
        self.predictor = PrefillTimePredictor(coeffs=prefill_coeffs)
        self.router = make_router(policy, self.slo, self.predictor)
        self.engines: dict[str, EngineRecord] = {}
        self.local_engines: list[LocalEngine] = []
        self.served_model = ""
        self.max_model_len = 0
        self._flights: dict[str, Generation] = {}
        self._waiting: set[str] = set()  # submitted, not placed yet
        self._tokenizer: LocalTokenizer | EngineTokenizer | None = None
        self._tasks: list[asyncio.Task] = []
        self._ids = 0
        self._started = False
        self._stopping = False

    # ---- lifecycle -----------------------------------------------------------------
    async def __aenter__(self) -> Coordinator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        tok_load: asyncio.Task | None = None
        try:
            urls = self.engine_urls
            if self.model_path is not None:
                urls = await self._launch()  # tokenizer loads while engines start
            if self.tokenizer_path and Path(self.tokenizer_path).is_dir():
                self._tokenizer = LocalTokenizer(self.tokenizer_path)
                tok_load = asyncio.create_task(asyncio.to_thread(self._tokenizer.load))
            if self.local_engines:
                await wait_healthy(self.local_engines, self.startup_timeout)
            for i, url in enumerate(urls):
                local = self.local_engines[i] if self.local_engines else None
                await self._attach(local.id if local else f"engine-{i}", url, local)
            if tok_load is not None:
                try:
                    await tok_load
                except Exception as e:  # e.g. no transformers in a coordinator-only install
                    log.warning("cannot load the tokenizer from %s (%s); counting with the engines' /tokenize",
                                self.tokenizer_path, e)  # fmt: skip
                    self._tokenizer = None
            if self._tokenizer is None:
                first = next(iter(self.engines.values()))
                self._tokenizer = EngineTokenizer(first.handle, self.served_model)
            self._tasks.append(asyncio.create_task(self._ticker(), name="ecoserve-tick"))
            self._tasks.append(asyncio.create_task(self._health_monitor(), name="ecoserve-health"))
            self._started = True
        except BaseException:
            if tok_load is not None:
                tok_load.cancel()
            await self.stop()
            raise

    async def _launch(self) -> list[str]:
        slots = plan_engines(self.n_engines, self.engine_args, self.device)
        extra_env: dict[str, str] = {}
        if (
            slots[0].device == "cpu"
            and "VLLM_CPU_KVCACHE_SPACE" not in os.environ
            and not any(a.startswith("--kv-cache-memory") for a in self.engine_args)
        ):
            # vLLM's CPU default reserves 90% of memory per engine: N engines cannot all start.
            extra_env["VLLM_CPU_KVCACHE_SPACE"] = str(self.cpu_kv_cache_gib or _default_kv_gib(self.n_engines))
        initial = "decode" if self.policy == "ecoserve" else "mixed"
        self.local_engines = build_engines(
            self.model_path or "", slots, self.engine_args, self.log_dir, initial_phase=initial, extra_env=extra_env
        )
        for e in self.local_engines:  # on this (the loop's) thread: see launcher.py
            e.start()
            log.info("started %s on %s (%s), log %s", e.id, e.url, e.slot.description if e.slot else "", e.log_path)
        return [e.url for e in self.local_engines]

    async def _attach(self, eid: str, url: str, local: LocalEngine | None) -> None:
        handle = EngineHandle(url, api_key=self.engine_api_key)
        await handle.open()
        try:
            cards = await handle.models()
            status = await handle.status()
        except (EngineUnreachable, UpstreamHTTPError) as e:
            await handle.close()
            raise RuntimeError(f"engine {url} is not usable: {e}. Is it a vLLM server started with "
                               f"VLLM_PLUGINS=ecoserve and --scheduler-cls {_SCHED}?") from None  # fmt: skip
        if not cards:
            await handle.close()
            raise RuntimeError(f"engine {url} serves no model")
        model = str(cards[0]["id"])
        if self.served_model and model != self.served_model:
            await handle.close()
            raise RuntimeError(
                f"engine {url} serves {model!r}, the others {self.served_model!r}: one model per coordinator"
            )
        self.served_model = model
        mml = int(cards[0].get("max_model_len") or 0)
        self.max_model_len = min(self.max_model_len, mml) if self.max_model_len else mml
        kv = max(1, status.kv_blocks_total * status.block_size)
        rec = EngineRecord(eid, url, handle, model, mml, kv, local=local, initial_phase=status.phase, observed=status)
        self.engines[eid] = rec
        baseline = self.policy != "ecoserve"
        inst = InstanceState(eid, kv_capacity_tokens=kv, url=url, max_requests=status.max_num_seqs or None)
        # The policy's state starts in decode with no window (mixed for the
        # baselines): make the engine match before it gets a request.
        rec.desired_phase = "mixed" if baseline else "decode"
        rec.phase_dirty.set()
        rec.tasks.append(asyncio.create_task(self._phase_loop(rec), name=f"ecoserve-phase-{eid}"))
        if status.addresses is not None and status.addresses.status:
            sub = StatusSubscriber(status.addresses.status, lambda st, rec=rec: self._on_status(rec, st))
            rec.tasks.append(asyncio.create_task(sub.run(), name=f"ecoserve-status-{eid}"))
        self._apply(self.router.add_instance(inst, time.monotonic()))
        log.info("engine %s at %s: model %s, KV %d tokens, phase %s", eid, url, model, kv, rec.desired_phase)

    async def stop(self) -> None:
        """Abort what is in flight, stop tasks, close handles, stop local engines."""
        self._stopping, self._started = True, False  # refuse new requests from here on
        for g in list(self._flights.values()):
            if g.error is None and not g.placed.is_set():
                g.error = RequestError(503, "the server is shutting down", "ServiceUnavailableError")
                g.placed.set()
            if g.upstream is not None:
                g.upstream.abort()
        tasks = self._tasks + [t for rec in self.engines.values() for t in rec.tasks]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        for rec in self.engines.values():
            rec.tasks.clear()
            if rec.local is None and not rec.failed and rec.acked_phase not in (None, rec.initial_phase):
                # An attached engine outlives us: give it back the phase it had,
                # not frozen in the last one we commanded.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(rec.handle.set_phase(rec.initial_phase), 2.0)
            await rec.handle.close()
        if self.local_engines:
            engines, self.local_engines = self.local_engines, []
            # Shielded: a second Ctrl-C must not leave engines behind.
            await asyncio.shield(asyncio.to_thread(stop_engines, engines))
        self._stopping = False

    # ---- requests ------------------------------------------------------------------
    async def open(self, kind: str, body: dict[str, Any]) -> Generation:
        """Admit one OpenAI request (``kind`` ``completions`` or ``chat``) and
        return once an engine accepted it. Raises RequestError (4xx/5xx)."""
        arrival = time.monotonic()
        try:
            req, gen = await self._admit(kind, body, arrival)
        except RequestError as e:  # refused before it reached the policy
            self.observer.on_done(_outcome_of(e), None, None)
            raise
        self._flights[gen.id] = gen
        self._waiting.add(gen.id)
        try:
            self._apply(self.router.submit(req, time.monotonic()))
            await gen._place_and_open()
        except BaseException as e:
            outcome = "aborted" if isinstance(e, asyncio.CancelledError) else _outcome_of(e)
            await gen.aclose(outcome)
            raise
        return gen

    async def _admit(self, kind: str, body: dict[str, Any], arrival: float) -> tuple[RequestState, Generation]:
        """Validate, count prompt tokens, build the upstream body and the policy's request."""
        if not self._started:
            raise RequestError(503, "the coordinator is not running", "ServiceUnavailableError")
        if kind not in _PATHS:
            raise ValueError(f"kind must be {COMPLETIONS!r} or {CHAT!r}")
        body = dict(body)
        model = body.get("model")
        if model is not None and model != self.served_model:
            raise RequestError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
        body["model"] = self.served_model
        stream = bool(body.get("stream"))
        opts = body.get("stream_options")
        if opts is not None and not stream:
            raise RequestError(400, "Stream options can only be defined when `stream=True`.", param="stream_options")
        if kind == COMPLETIONS and not prompts_of(body):
            raise RequestError(400, "`prompt` must be a non-empty string, token list, or list of them", param="prompt")
        if kind == CHAT and not (isinstance(body.get("messages"), list) and body["messages"]):
            raise RequestError(400, "`messages` must be a non-empty list", param="messages")
        n = body.get("n") or 1
        if not isinstance(n, int) or n < 1:
            raise RequestError(400, "`n` must be a positive integer", param="n")
        if not any(not r.failed for r in self.engines.values()):
            raise RequestError(503, "no engine is available", "ServiceUnavailableError")
        if len(self._waiting) >= self.max_pending:
            raise RequestError(429, f"too many requests waiting ({self.max_pending}); retry later", "RateLimitError")

        assert self._tokenizer is not None
        counts = await self._tokenizer.count(kind, body)
        prompt_tokens, longest = sum(counts), max(counts, default=0)
        max_tokens = body.get("max_completion_tokens") if kind == CHAT else None
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        if max_tokens is None:
            max_tokens = 16 if kind == COMPLETIONS else max(1, self.max_model_len - longest)  # vLLM's defaults
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise RequestError(400, "`max_tokens` must be a positive integer", param="max_tokens")
        if self.max_model_len and longest + max_tokens > self.max_model_len:
            raise RequestError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{longest + max_tokens} tokens ({longest} in the prompt, {max_tokens} in the completion). "
                "Please reduce the length of the prompt or the completion.",
                param="max_tokens",
            )
        keep_usage = stream and bool(isinstance(opts, dict) and opts.get("include_usage"))
        keep_continuous = keep_usage and bool(opts.get("continuous_usage_stats"))  # type: ignore[union-attr]
        if not stream:
            keep_usage = keep_continuous = True  # the reply is built from them
        body["stream"] = True
        body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}

        self._ids += 1
        rid = f"eco-{self._ids}"
        gen = Generation(self, rid, kind, _enc.encode(body), keep_usage=keep_usage, keep_continuous=keep_continuous,
                         arrival=arrival)  # fmt: skip
        n_prompts = max(1, len(counts)) if kind == COMPLETIONS else 1
        return RequestState(rid, arrival, prompt_tokens, max_tokens * n * n_prompts), gen

    def _on_tokens(self, gen: Generation, count: int) -> None:
        now = time.monotonic()
        if gen.first_token_at is None:
            gen.first_token_at = now
        gen.tokens += count
        self._apply(self.router.on_tokens(gen.id, count, now))

    def _finish(self, gen: Generation, outcome: str) -> None:
        self._flights.pop(gen.id, None)
        self._waiting.discard(gen.id)
        now = time.monotonic()
        self._apply(self.router.on_finish(gen.id, now))
        ttft = gen.first_token_at - gen.arrival if gen.first_token_at is not None else None
        tpot = (now - gen.first_token_at) / (gen.tokens - 1) if ttft is not None and gen.tokens > 1 else None
        self.observer.on_done(outcome, ttft, tpot)

    # ---- carrying out the policy's actions -----------------------------------------
    def _apply(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Routed):
                rec = self.engines.get(a.instance_id)
                if rec is not None:
                    rec.routed_total += 1
                self.observer.on_routed(a.instance_id, a.reason)
                gen = self._flights.get(a.request_id)
                if gen is not None:
                    gen.instance_id = a.instance_id
                    self._waiting.discard(a.request_id)
                    gen.placed.set()
            elif isinstance(a, SetPhase):
                rec = self.engines.get(a.instance_id)
                if rec is not None and not rec.failed:
                    rec.desired_phase = a.phase.value
                    rec.phase_dirty.set()
            elif isinstance(a, Queued):
                self.observer.on_queued(a.reason.value)
            elif isinstance(a, Rejected):
                gen = self._flights.get(a.request_id)
                if gen is not None:
                    gen.error = RequestError(400, f"request rejected: {a.reason}", param="max_tokens")
                    self._waiting.discard(a.request_id)
                    gen.placed.set()
            elif isinstance(a, Drained):
                log.info("engine %s drained", a.instance_id)

    async def _phase_loop(self, rec: EngineRecord) -> None:
        """Send the engine the phase the policy wants, one command at a time."""
        while True:
            await rec.phase_dirty.wait()
            rec.phase_dirty.clear()
            want = rec.desired_phase
            if want is None or want == rec.acked_phase:
                continue
            try:
                status = await rec.handle.set_phase(want)
                rec.acked_phase = status.phase
                self._observe_status(rec, status)
            except (EngineUnreachable, UpstreamHTTPError) as e:
                log.warning("phase command %s -> %s failed: %s", rec.id, want, e)
                await asyncio.sleep(0.1)
            if rec.desired_phase != rec.acked_phase:
                rec.phase_dirty.set()

    def _on_status(self, rec: EngineRecord, st: EngineStatus) -> None:
        self._observe_status(rec, st)

    def _observe_status(self, rec: EngineRecord, st: EngineStatus) -> None:
        if rec.observed is None or st.seq >= rec.observed.seq or st.time > rec.observed.time:
            rec.observed = st
        for step in st.steps:
            if step.step <= rec.last_step:
                continue
            rec.last_step = step.step
            # Pure prefill steps calibrate the predictor (a step may prefill
            # several prompts: it is fed their total, as the engine ran it).
            if step.kind == "prefill" and step.prefill_tokens > 0 and step.duration_s > 0:
                self.predictor.observe(step.prefill_tokens, step.duration_s)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            if self._waiting:
                self._apply(self.router.tick(time.monotonic()))

    async def _health_monitor(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_S)
            for rec in list(self.engines.values()):
                if rec.failed:
                    continue
                if rec.local is not None:
                    code = rec.local.exit_code()
                    if code is not None:
                        self._fail_engine(rec, f"process exited with code {code}; log {rec.local.log_path}")
                    continue
                if await rec.handle.health(timeout=2.0):
                    rec.health_misses = 0
                else:
                    rec.health_misses += 1
                    if rec.health_misses >= 3:
                        self._fail_engine(rec, "GET /health failed 3 times")

    async def _engine_broke(self, rec: EngineRecord, why: str) -> None:
        """A stream to ``rec`` broke: fail it if it is really gone."""
        if rec.failed or self._stopping:
            return
        alive = (rec.local is None or rec.local.exit_code() is None) and await rec.handle.health(timeout=2.0)
        if not alive and not rec.failed:
            self._fail_engine(rec, why)

    def _fail_engine(self, rec: EngineRecord, why: str) -> None:
        rec.failed = why
        log.error("engine %s (%s) failed: %s", rec.id, rec.url, why)
        for gen in list(self._flights.values()):
            if gen.instance_id != rec.id:
                continue
            if gen.first_token_at is None:  # the router re-queues it: wait for a new placement
                gen.instance_id = None
                gen.placed.clear()
                self._waiting.add(gen.id)
            else:
                gen.broken = why
            if gen.upstream is not None:
                gen.upstream.abort()
        for t in rec.tasks:
            t.cancel()
        self._apply(self.router.fail_instance(rec.id, time.monotonic()))
        if all(r.failed for r in self.engines.values()):
            for rid in list(self._waiting):
                gen = self._flights.get(rid)
                if gen is not None:
                    gen.error = RequestError(503, "every engine has failed", "ServiceUnavailableError")
                    gen.placed.set()
            self._waiting.clear()

    # ---- Python API ----------------------------------------------------------------
    async def generate(self, prompt: str | list[int], **params: Any) -> dict[str, Any]:
        """A completion (OpenAI ``/v1/completions`` reply as a dict)."""
        return await self._once(COMPLETIONS, {**params, "prompt": prompt})

    async def chat(self, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
        """A chat completion (OpenAI ``/v1/chat/completions`` reply as a dict)."""
        return await self._once(CHAT, {**params, "messages": messages})

    def generate_stream(self, prompt: str | list[int], **params: Any) -> AsyncIterator[dict[str, Any]]:
        """Completion chunks as they come (dicts)."""
        return self._chunks(COMPLETIONS, {**params, "prompt": prompt, "stream": True})

    def chat_stream(self, messages: list[dict[str, Any]], **params: Any) -> AsyncIterator[dict[str, Any]]:
        return self._chunks(CHAT, {**params, "messages": messages, "stream": True})

    async def _once(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        body.pop("stream", None)
        gen = await self.open(kind, body)
        try:
            return await gen.result()
        finally:
            await gen.aclose()

    async def _chunks(self, kind: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        gen = await self.open(kind, body)
        try:
            async for batch in gen.payloads():
                for p in batch:
                    yield _dec.decode(p)
        finally:
            await gen.aclose()

    # ---- status --------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The ``/ecoserve/status`` document."""
        states = {i.id: i for i in self.router.instances()}
        instances = []
        for rec in self.engines.values():
            inst = states.get(rec.id)
            obs = rec.observed
            macro = "m0"
            if inst is not None:
                with contextlib.suppress(KeyError):
                    macro = self.router.group_of(rec.id)
            instances.append({
                "id": rec.id,
                "url": rec.url,
                "phase": inst.phase.value if inst is not None else None,
                "num_running": inst.num_running if inst is not None else 0,
                "num_waiting": inst.num_waiting if inst is not None else 0,
                "macro_instance": macro if inst is not None else None,
                "healthy": rec.failed is None,
                "failed": rec.failed,
                "draining": bool(inst is not None and inst.draining),
                "routed_total": rec.routed_total,
                "kv_capacity_tokens": rec.kv_capacity_tokens,
                "kv_reserved_tokens": inst.kv_reserved if inst is not None else 0,
                "commanded_phase": rec.acked_phase,
                "pid": rec.local.pid if rec.local is not None else None,
                "log": str(rec.local.log_path) if rec.local is not None else None,
                "engine": None if obs is None else {
                    "phase": obs.phase, "activity": obs.activity, "num_waiting": obs.num_waiting,
                    "num_prefilling": obs.num_prefilling, "num_decoding": obs.num_decoding,
                    "kv_blocks_free": obs.kv_blocks_free, "kv_blocks_total": obs.kv_blocks_total,
                    "block_size": obs.block_size, "step": obs.step, "time": obs.time,
                },
            })  # fmt: skip
        return {
            "model": self.served_model,
            "policy": self.policy,
            "slo": {"ttft": self.slo.ttft, "tpot": self.slo.tpot},
            "pending": len(self._waiting),
            "in_flight": len(self._flights),
            "predictor": {"correction": self.predictor.correction, "observations": self.predictor.observations},
            "instances": instances,
        }


_SCHED = "vllm_plugin.scheduler.EcoServeScheduler"


def _outcome_of(e: BaseException) -> str:
    if isinstance(e, RequestError):
        if e.status in (429, 503):
            return "overloaded"
        return "client_error" if e.status < 500 else "engine_error"
    return "engine_error"


def _default_log_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ecoserve" / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def _default_kv_gib(n_engines: int) -> int:
    """KV cache per CPU engine: a third of the available memory shared out, 1 to 8 GiB."""
    try:
        with open("/proc/meminfo") as f:
            avail_kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        gib = avail_kib / 2**20
    except (OSError, StopIteration, ValueError):
        gib = 8.0
    return int(min(8, max(1, gib / 3 / n_engines)))
