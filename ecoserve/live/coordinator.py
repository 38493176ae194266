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

from ecoserve.openai.aggregate import ResponseBuilder
from ecoserve.openai.chunks import StreamTally
from ecoserve.engine.handle import EngineHandle, EngineUnreachable, UpstreamHTTPError, UpstreamStream
from ecoserve.engine.launcher import LocalLauncher
from ecoserve.engine.launcher_api import EngineLauncher, LaunchedEngine
from ecoserve.engine.resources import default_cpu_kv_gib
from ecoserve.openai.sse import SSESplitter
from ecoserve.engine.status_stream import StatusSubscriber
from ecoserve.live.tokenizer import EngineTokenizer, LocalTokenizer
from ecoserve.openai.prompts import prompts_of
from ecoserve.policy import (
    POLICIES,
    SLO,
    Action,
    Drained,
    InstanceState,
    Merge,
    MitosisConfig,
    MitosisPlanner,
    OverallScheduler,
    PrefillTimePredictor,
    Queued,
    Rejected,
    RequestState,
    Routed,
    ScaleIn,
    ScaleOut,
    SetPhase,
    Split,
    make_router,
)
from ecoserve.protocol import EngineStatus

log = logging.getLogger("ecoserve.live.coordinator")

# The prefill-time predictor's starting model before any engine step is seen:
# 10 ms + 1 ms per prompt token. Deliberately pessimistic for small models (a
# slow prediction only makes windows smaller, never late); the engines' prefill
# step records correct it online, by a factor within [0.2, 5].
DEFAULT_PREFILL_COEFFS = (0.01, 1e-3, 0.0)
TICK_S = 0.01  # re-offer pending requests this often while any wait
HEALTH_S = 1.0  # how often engine liveness is checked
# An engine whose /health does not answer within HEALTH_TIMEOUT_S this many
# times in a row is hung: failed, killed and (when we launched it) replaced.
# Generous, so that a CPU engine busy with a long prefill is not mistaken for one.
HEALTH_TIMEOUT_S = 5.0
HEALTH_MISSES = 3
AUTOSCALE_S = 1.0  # how often the mitosis planner is asked
LEASE_S, LEASE_RENEW_S = 30.0, 5.0  # phase leases of attached engines (see _phase_loop)
REPLACE_TRIES = 3
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
    launched: LaunchedEngine | None = None  # None: attached, not ours to stop
    initial_phase: str = "temporal"  # as found when attached
    desired_phase: str | None = None
    acked_phase: str | None = None
    observed: EngineStatus | None = None
    routed_total: int = 0
    failed: str | None = None  # why, once failed
    draining: bool = False
    leaving: bool = False  # drained: being stopped, no longer watched
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
        launcher: EngineLauncher | None = None,
        max_engines: int | None = None,
        autoscale: MitosisConfig | None = None,
        replace_failed: bool = True,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
        if (model is None) == (not engine_urls):
            raise ValueError("give either a model to launch engines for, or engine_urls to attach to (not both)")
        if launcher is not None and model is None:
            raise ValueError("a launcher needs the model it launches engines for")
        if autoscale is not None and policy != "ecoserve":
            raise ValueError("autoscaling (mitosis) needs the ecoserve policy: the baselines have no macro instances")
        self.model_path = str(model) if model is not None else None
        self.n_engines = engines
        # The most engines that may run at once (a local launcher plans its
        # cores or GPUs for this many).
        self.max_engines = max(engines, max_engines or 0, autoscale.max_instances if autoscale else 0)
        self.launcher = launcher
        self.autoscale = autoscale
        self.planner = MitosisPlanner(SLO(ttft=slo_ttft, tpot=slo_tpot), autoscale) if autoscale else None
        self.replace_failed = replace_failed
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
        self.events: list[dict[str, Any]] = []  # scaling and failure history, for status
        self._launching = 0
        self.requeued_total = 0  # requests moved off a failed engine before their first token
        self.replaced_total = 0
        self._drains: dict[str, asyncio.Future[None]] = {}
        self._side_tasks: set[asyncio.Task] = set()  # launches, drains, replacements
        self.served_model = ""
        self.max_model_len = 0
        self._flights: dict[str, Generation] = {}
        self._waiting: set[str] = set()  # submitted, not placed yet
        self._tokenizer: LocalTokenizer | EngineTokenizer | None = None
        self._tasks: list[asyncio.Task] = []
        self._ids = 0
        self._started = False
        self._stopping = False
        self._accepting = True

    # ---- lifecycle -----------------------------------------------------------------
    async def __aenter__(self) -> Coordinator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        tok_load: asyncio.Task | None = None
        try:
            launched: list[LaunchedEngine] = []
            if self.model_path is not None:
                launched = self._launch(self.n_engines)  # the tokenizer loads while engines start
            if self.tokenizer_path and Path(self.tokenizer_path).is_dir():
                self._tokenizer = LocalTokenizer(self.tokenizer_path)
                tok_load = asyncio.create_task(asyncio.to_thread(self._tokenizer.load))
            if launched:
                assert self.launcher is not None
                await self.launcher.wait_healthy(launched, self.startup_timeout)
                for e in launched:
                    await self._attach(e.id, e.url, e)
            for i, url in enumerate(self.engine_urls):
                await self._attach(f"engine-{i}", url, None)
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
            if self.planner is not None:
                self._tasks.append(asyncio.create_task(self._autoscaler(), name="ecoserve-autoscale"))
            self._started = True
        except BaseException:
            if tok_load is not None:
                tok_load.cancel()
            await self.stop()
            raise

    def _launch(self, count: int) -> list[LaunchedEngine]:
        """Start ``count`` engines (not yet healthy), building the local launcher on first use."""
        if self.launcher is None:
            assert self.model_path is not None
            extra_env: dict[str, str] = {}
            if (
                self.device in ("auto", "cpu")
                and "VLLM_CPU_KVCACHE_SPACE" not in os.environ
                and not any(a.startswith("--kv-cache-memory") for a in self.engine_args)
            ):
                # vLLM's CPU default reserves 90% of memory per engine: N engines
                # cannot all start. (Ignored by GPU engines.)
                extra_env["VLLM_CPU_KVCACHE_SPACE"] = str(self.cpu_kv_cache_gib or default_cpu_kv_gib(self.max_engines))
            self.launcher = LocalLauncher(
                self.model_path, self.engine_args, slots=self.max_engines, device=self.device,
                log_dir=self.log_dir, extra_env=extra_env,
            )  # fmt: skip
        initial = "decode" if self.policy == "ecoserve" else "mixed"
        engines = self.launcher.launch(count, initial_phase=initial)
        for e in engines:
            log.info("starting %s (%s launcher), log %s", e.id, self.launcher.name, e.log_path)
        return engines

    async def _attach(self, eid: str, url: str, launched: LaunchedEngine | None, macro: int | None = None) -> None:
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
        if any(r.url == url and not r.failed for r in self.engines.values()):
            await handle.close()
            raise ValueError(f"engine {url} is already attached")
        self.served_model = model
        mml = int(cards[0].get("max_model_len") or 0)
        self.max_model_len = min(self.max_model_len, mml) if self.max_model_len else mml
        kv = max(1, status.kv_blocks_total * status.block_size)
        rec = EngineRecord(eid, url, handle, model, mml, kv, launched=launched, initial_phase=status.phase,
                           observed=status)  # fmt: skip
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
        now = time.monotonic()
        if macro is not None and isinstance(self.router, OverallScheduler):
            self._apply(self.router.add_instance(inst, now, macro=min(macro, len(self.router.macros))))
        else:
            self._apply(self.router.add_instance(inst, now))
        log.info("engine %s at %s: model %s, KV %d tokens, phase %s", eid, url, model, kv, rec.desired_phase)

    async def _detach(self, rec: EngineRecord) -> None:
        """Stop watching an engine that left the routing (drained or failed);
        stop it if we launched it."""
        for t in rec.tasks:
            t.cancel()
        for t in rec.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        rec.tasks.clear()
        await self._hand_back(rec)
        if rec.launched is not None and self.launcher is not None:
            await self.launcher.stop([rec.launched])

    async def _hand_back(self, rec: EngineRecord) -> None:
        """Close our handle. An attached engine outlives us: give it back the
        phase it had, not frozen in the last one we commanded."""
        if rec.launched is None and not rec.failed and rec.acked_phase not in (None, rec.initial_phase):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(rec.handle.set_phase(rec.initial_phase), 2.0)
        await rec.handle.close()

    # ---- scaling: one engine at a time ----------------------------------------------
    async def add_engine(self, macro: int | None = None) -> str:
        """Launch one more engine, wait until it serves, and add it to the
        routing (to macro instance ``macro``: an index in ``layout()``, or
        ``len(layout())`` for a new one; default: where the policy adds).
        Returns its id. Raises ValueError when nothing can be launched here."""
        if self.model_path is None:
            raise ValueError("this coordinator attaches to engines (--engine-url); it launches none: "
                             "attach one with attach_engine(url)")  # fmt: skip
        if self._stopping:
            raise ValueError("the coordinator is stopping")
        self._launching += 1
        try:
            try:
                [engine] = self._launch(1)
            except ValueError as e:  # PlacementError: no free slot
                raise ValueError(str(e)) from None
            try:
                assert self.launcher is not None
                await self.launcher.wait_healthy([engine], self.startup_timeout)
                await self._attach(engine.id, engine.url, engine, macro=macro)
            except BaseException:
                assert self.launcher is not None
                await asyncio.shield(self.launcher.stop([engine]))
                raise
        finally:
            self._launching -= 1
        self._event("added", engine.id)
        return engine.id

    async def attach_engine(self, url: str, macro: int | None = None) -> str:
        """Add an already running engine (with the plugin) to the routing."""
        eid = f"attached-{len(self.engines)}"
        while eid in self.engines:
            eid += "x"
        await self._attach(eid, url.rstrip("/"), None, macro=macro)
        self._event("attached", eid)
        return eid

    async def remove_engine(self, eid: str) -> None:
        """Drain an engine: route nothing new to it, let what it holds finish,
        then stop it (ours) or let it go (attached). Never a kill."""
        rec = self.engines.get(eid)
        if rec is None:
            raise KeyError(eid)
        if rec.failed:  # already out of the routing
            self.engines.pop(eid, None)
            return
        if eid not in self._drains:
            serving = [r for r in self.engines.values() if not r.failed and not r.draining]
            if serving == [rec]:
                raise ValueError(f"{eid} is the last engine serving: add another before removing it")
            rec.draining = True
            self._drains[eid] = asyncio.get_running_loop().create_future()
            self._event("draining", eid)
            self._apply(self.router.remove_instance(eid, time.monotonic()))
        await asyncio.shield(self._drains[eid])

    async def _finish_drain(self, eid: str) -> None:
        rec = self.engines.get(eid)
        fut = self._drains.get(eid)
        try:
            if rec is not None:
                rec.leaving = True  # its health checks fail from here on, by design
                await self._detach(rec)
                self.engines.pop(eid, None)
                self._event("removed", eid)
        finally:
            self._drains.pop(eid, None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    def layout(self) -> list[dict[str, Any]]:
        """Macro instances in routing order, with their engines."""
        if isinstance(self.router, OverallScheduler):
            return [{"name": m.name, "instances": [i.id for i in m.instances()]} for m in self.router.macros]
        return [{"name": "m0", "instances": [i.id for i in self.router.instances()]}]

    def split_macro(self, index: int) -> None:
        """Split macro instance ``index`` in two halves (moves handles only)."""
        sched = self._macro_router()
        if not 0 <= index < len(sched.macros):
            raise IndexError(f"no macro instance {index}; there are {len(sched.macros)}")
        self._apply(sched.split(index, time.monotonic()))
        self._event("split", sched.macros[index].name)

    def merge_macros(self, into: int, other: int) -> None:
        """Move every engine and pending request of macro ``other`` into ``into``."""
        sched = self._macro_router()
        for i in (into, other):
            if not 0 <= i < len(sched.macros):
                raise IndexError(f"no macro instance {i}; there are {len(sched.macros)}")
        name = sched.macros[other].name
        self._apply(sched.merge(into, other, time.monotonic()))
        self._event("merged", name)

    def _macro_router(self) -> OverallScheduler:
        if not isinstance(self.router, OverallScheduler):
            raise ValueError(f"the {self.policy} policy has no macro instances")
        return self.router

    async def _autoscaler(self) -> None:
        """Carry out the mitosis planner's decisions, one at a time."""
        assert self.planner is not None
        sched = self._macro_router()
        while True:
            await asyncio.sleep(AUTOSCALE_S)
            for action in self.planner.plan(sched, time.monotonic(), launching=self._launching):
                if isinstance(action, (Split, Merge)):
                    before = [m.name for m in sched.macros]
                    self._apply(self.planner.apply_structural(sched, action, time.monotonic()))
                    what = "split" if isinstance(action, Split) else "merged"
                    self._event(what, before[action.macro if isinstance(action, Split) else action.other])
                elif isinstance(action, ScaleOut):
                    self._spawn(self._scale_out(action.macro), "scale-out")
                elif isinstance(action, ScaleIn):
                    self._spawn(self.remove_engine(action.instance_id), "scale-in")

    async def _scale_out(self, macro: int) -> None:
        try:
            await self.add_engine(macro)
        except Exception as e:
            log.error("scale-out failed: %s", e)
            self._event("launch-failed", None, str(e))

    def _spawn(self, coro: Any, what: str) -> None:
        """Run a launch, drain or replacement beside the loop; its failure is logged, never lost."""
        task = asyncio.create_task(coro, name=f"ecoserve-{what}")
        self._side_tasks.add(task)
        task.add_done_callback(self._side_done)

    def _side_done(self, task: asyncio.Task) -> None:
        self._side_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed: %s", task.get_name(), task.exception())
            self._event("error", None, f"{task.get_name()}: {task.exception()}")

    def _event(self, kind: str, instance: str | None, detail: str | None = None) -> None:
        self.events.append({"time": time.time(), "event": kind, "instance": instance, "detail": detail})
        del self.events[:-200]
        log.info("%s %s%s", kind, instance or "", f": {detail}" if detail else "")

    async def drain_requests(self, grace: float) -> int:
        """The first half of a graceful shutdown: refuse new requests (503)
        from now on and wait up to ``grace`` seconds for those in flight,
        pending ones included, to finish. Returns how many are still in flight."""
        self._accepting = False
        deadline = time.monotonic() + grace
        while self._flights and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return len(self._flights)

    async def stop(self) -> None:
        """Abort what is in flight, stop tasks, close handles, stop our engines."""
        self._stopping, self._started = True, False  # refuse new requests from here on
        for g in list(self._flights.values()):
            if g.error is None and not g.placed.is_set():
                g.error = RequestError(503, "the server is shutting down", "ServiceUnavailableError")
                g.placed.set()
            if g.upstream is not None:
                g.upstream.abort()
        tasks = self._tasks + list(self._side_tasks) + [t for rec in self.engines.values() for t in rec.tasks]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        for rec in list(self.engines.values()):
            rec.tasks.clear()
            await self._hand_back(rec)
        if self.launcher is not None:
            # Shielded: a second Ctrl-C must not leave engines behind.
            await asyncio.shield(self.launcher.close())
        for fut in self._drains.values():
            if not fut.done():
                fut.set_result(None)
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
        if not self._accepting:
            raise RequestError(503, "the server is shutting down", "ServiceUnavailableError")
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
        if self._launching == 0 and not any(not r.failed for r in self.engines.values()):
            raise RequestError(503, "no engine is available", "ServiceUnavailableError")
        if len(self._waiting) >= self.max_pending:
            raise RequestError(429, f"too many requests waiting ({self.max_pending}); retry later", "RateLimitError")

        assert self._tokenizer is not None
        counts = await self._tokenizer.count(kind, body)
        # Again after the await: requests arriving together all passed the
        # first check while they were being counted.
        if len(self._waiting) >= self.max_pending:
            raise RequestError(429, f"too many requests waiting ({self.max_pending}); retry later", "RateLimitError")
        prompt_tokens, longest = sum(counts), max(counts, default=0)
        max_tokens = body.get("max_completion_tokens") if kind == CHAT else None
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        if max_tokens is None:
            max_tokens = 16 if kind == COMPLETIONS else max(1, self.max_model_len - longest)  # vLLM's defaults
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise RequestError(400, "`max_tokens` must be a positive integer", param="max_tokens")
        if self.max_model_len and longest >= self.max_model_len:
            raise RequestError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, your prompt has "
                f"{longest} tokens, which leaves no room for a completion. Please shorten the prompt.",
                param="prompt" if kind == COMPLETIONS else "messages",
            )
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
            if self.planner is not None:
                self.planner.observe_ttft(now - gen.arrival, now)
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
                if a.instance_id in self._drains:
                    self._spawn(self._finish_drain(a.instance_id), f"drained-{a.instance_id}")

    async def _phase_loop(self, rec: EngineRecord) -> None:
        """Send the engine the phase the policy wants, one command at a time.

        An attached engine outlives us, so its phases are leased: renewed
        every LEASE_RENEW_S, they lapse back to the engine's own startup phase
        LEASE_S after we are gone (crash, network split) instead of leaving it
        frozen in ``decode``. Engines we launched die with us: no lease."""
        leased = rec.launched is None
        while True:
            renew = False
            if leased:
                try:
                    await asyncio.wait_for(rec.phase_dirty.wait(), LEASE_RENEW_S)
                except asyncio.TimeoutError:
                    renew = True
            else:
                await rec.phase_dirty.wait()
            rec.phase_dirty.clear()
            want = rec.desired_phase
            if want is None or (want == rec.acked_phase and not renew):
                continue
            try:
                status = await rec.handle.set_phase(want, lease_s=LEASE_S if leased else None)
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
            live = [r for r in self.engines.values() if not r.failed and not r.leaving]
            await asyncio.gather(*(self._check_health(r) for r in live))

    async def _check_health(self, rec: EngineRecord) -> None:
        """Dead (process exited) or hung (``/health`` silent HEALTH_MISSES times in a row)."""
        code = rec.launched.exit_code() if rec.launched is not None else None
        if code is not None:
            self._fail_engine(rec, f"process exited with code {code}; log {rec.launched.log_path}")  # type: ignore[union-attr]
            return
        if await rec.handle.health(timeout=HEALTH_TIMEOUT_S):
            rec.health_misses = 0
            return
        rec.health_misses += 1
        if rec.health_misses >= HEALTH_MISSES and not rec.failed:
            self._fail_engine(rec, f"GET /health failed {HEALTH_MISSES} times in a row (dead or hung)")

    async def _engine_broke(self, rec: EngineRecord, why: str) -> None:
        """A stream to ``rec`` broke: fail it if it is really gone."""
        if rec.failed or rec.leaving or self._stopping:
            return
        exited = rec.launched is not None and rec.launched.exit_code() is not None
        alive = not exited and await rec.handle.health(timeout=2.0)
        if not alive and not rec.failed:
            self._fail_engine(rec, why)

    def _fail_engine(self, rec: EngineRecord, why: str) -> None:
        """Take a dead or hung engine out of rotation: requests it had not
        started go back to the queue (they keep their place), started streams
        end with an error; an engine we launched is killed and replaced."""
        if rec.failed or rec.leaving:
            return
        rec.failed = why
        log.error("engine %s (%s) failed: %s", rec.id, rec.url, why)
        self._event("failed", rec.id, why)
        requeued = 0
        for gen in list(self._flights.values()):
            if gen.instance_id != rec.id:
                continue
            if gen.first_token_at is None:  # the router re-queues it: wait for a new placement
                gen.instance_id = None
                gen.placed.clear()
                self._waiting.add(gen.id)
                requeued += 1
            else:
                gen.broken = why
            if gen.upstream is not None:
                gen.upstream.abort()
        self.requeued_total += requeued
        for t in rec.tasks:
            t.cancel()
        macro = None
        if isinstance(self.router, OverallScheduler):
            with contextlib.suppress(KeyError, ValueError):
                macro = self.router.macros.index(self.router.macro_of(rec.id))
        self._apply(self.router.fail_instance(rec.id, time.monotonic()))
        drain = self._drains.get(rec.id)
        if drain is not None and not drain.done():
            drain.set_result(None)  # nothing left to drain
        replacing = rec.launched is not None and self.replace_failed and not self._stopping
        if replacing:
            self._spawn(self._replace(rec, macro, draining=rec.draining), f"replace-{rec.id}")
        elif rec.launched is not None and self.launcher is not None:
            self._spawn(self.launcher.stop([rec.launched]), f"stop-{rec.id}")
        if not replacing:
            self._fail_waiting_if_no_engine()

    async def _replace(self, rec: EngineRecord, macro: int | None, *, draining: bool) -> None:
        """Kill what is left of a failed engine (a hung one still holds its
        memory and devices), then start a new one in its place, unless it was
        being drained anyway."""
        self._launching += 1
        try:
            assert self.launcher is not None and rec.launched is not None
            await self.launcher.stop([rec.launched])
            await rec.handle.close()
            self.engines.pop(rec.id, None)
            if draining:
                return
            for attempt in range(1, REPLACE_TRIES + 1):
                try:
                    new = await self.add_engine(macro)
                    self.replaced_total += 1
                    self._event("replaced", rec.id, f"by {new}")
                    return
                except Exception as e:
                    log.error("replacing %s failed (try %d of %d): %s", rec.id, attempt, REPLACE_TRIES, e)
                    self._event("launch-failed", rec.id, str(e))
                    await asyncio.sleep(2.0 * attempt)
        finally:
            self._launching -= 1
            self._fail_waiting_if_no_engine()

    def _fail_waiting_if_no_engine(self) -> None:
        """No engine serves and none is launching: waiting requests have nothing to wait for."""
        if self._launching or any(not r.failed for r in self.engines.values()):
            return
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
                "draining": rec.draining,
                "routed_total": rec.routed_total,
                "kv_capacity_tokens": rec.kv_capacity_tokens,
                "kv_reserved_tokens": inst.kv_reserved if inst is not None else 0,
                "commanded_phase": rec.acked_phase,
                "pid": rec.launched.pid if rec.launched is not None else None,
                "log": str(rec.launched.log_path) if rec.launched is not None and rec.launched.log_path else None,
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
            "layout": self.layout(),
            "launcher": self.launcher.name if self.launcher is not None else None,
            "launching": self._launching,
            "autoscale": None if self.autoscale is None else {
                "min_engines": self.autoscale.min_instances, "max_engines": self.autoscale.max_instances,
                "macro_min": self.autoscale.macro_min, "macro_max": self.autoscale.macro_max,
                "ttft_window_s": self.autoscale.ttft_window_s, "cooldown_s": self.autoscale.cooldown_s,
                "scale_in_hold_s": self.autoscale.scale_in_hold_s,
            },
            "requeued_total": self.requeued_total,
            "replaced_total": self.replaced_total,
            "events": self.events[-50:],
        }  # fmt: skip


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
