"""The live coordinator: an asyncio loop around the policy core.

It composes the pieces and carries out the router's actions; each piece owns
its own state and reports back by a small protocol:

- ``Admission`` (admission.py) turns a validated body into what the policy and
  the engine need;
- the ``Router`` (ecoserve.policy, built from one ``PolicyConfig``) decides:
  ``Routed`` places the request's ``Generation``, ``Queued`` parks it until a
  later event routes it, ``Rejected`` answers 400, ``SetPhase`` becomes a phase
  command, ``Drained`` stops a drained engine;
- a ``Generation`` (generation.py) streams one request from its engine and
  reports its tokens (the first call is the first token) and its end;
- the ``Fleet`` (fleet.py) owns the engines: attach, health, failure (requests
  without a first token go back to the queue, nothing lost), replacement,
  drains, phase commands, status pushes that calibrate the predictor;
- ``LiveScaling`` (autoscaler.py) runs the mitosis planner;
- a periodic ``tick`` re-offers what is pending.

Everything runs on one event loop thread; router calls are synchronous, so no
locks. ``Coordinator`` is also the Python API::

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
from pathlib import Path
from typing import Any

import msgspec

from ecoserve.engine.handle import EngineHandle
from ecoserve.engine.launcher_api import EngineLauncher, LaunchedEngine, OnProgress
from ecoserve.live.admission import Admission, served_names
from ecoserve.live.autoscaler import LiveScaling
from ecoserve.live.fleet import EngineRecord, Fleet, LaunchSettings
from ecoserve.live.generation import Generation, outcome_of
from ecoserve.live.observer import Observer, Observers
from ecoserve.live.prefixes import LivePrefixes
from ecoserve.live.status import layout, status_document
from ecoserve.live.tokenizer import EngineTokenizer, LocalTokenizer
from ecoserve.metrics import tpot_of
from ecoserve.openai.chunks import ModelRename
from ecoserve.openai.errors import RequestError
from ecoserve.openai.validation import CHAT, COMPLETIONS, validate
from ecoserve.protocol import StepRecord
from ecoserve.policy import (
    SLO,
    Action,
    Drained,
    MitosisConfig,
    PolicyConfig,
    Queued,
    Rejected,
    RequestState,
    Routed,
    SetPhase,
)

log = logging.getLogger("ecoserve.coordinator")

TICK_S = 0.01  # re-offer pending requests this often while any wait
# Prompts longer than this have their block hashes computed on a worker thread
# (about 0.05 ms per 128-token block on this machine: 1.7 ms for 4,096 tokens), not on the loop.
INLINE_HASH_TOKENS = 2048
_dec = msgspec.json.Decoder()


class Coordinator:
    """Launches (``model``, ``engines``) or attaches to (``engine_urls``) vLLM
    engines running the EcoServe plugin, and serves requests across them.

    The policy is one ``PolicyConfig`` (``config``); without one, ``policy``,
    ``slo_ttft``, ``slo_tpot``, ``prefill_coeffs`` and ``autoscale`` make it.
    Engine arguments (``engine_args``) go to every launched engine unchanged
    (e.g. ``["--max-model-len", "2048", "--tensor-parallel-size", "2"]``).
    ``served_model_name`` (vLLM's ``--served-model-name``): the name(s) requests
    may use, the first reported in replies (default: the engines' own).
    ``prefix_routing``: follow what each engine's prefix cache holds (its
    KV-cache events where it publishes them, live/prefixes.py) and let the
    policy prefer the engine holding a prompt's prefix, inside its SLO check;
    ``kv_events`` False: estimate each cache from the blocks routed there only.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        engines: int = 1,
        engine_urls: Sequence[str] = (),
        config: PolicyConfig | None = None,
        policy: str = "ecoserve",
        slo_ttft: float = 5.0,
        slo_tpot: float = 0.1,
        prefill_coeffs: tuple[float, float, float] | None = None,
        autoscale: MitosisConfig | None = None,
        engine_args: Sequence[str] = (),
        device: str = "auto",
        log_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 600.0,
        tokenizer: str | None = None,
        engine_api_key: str | None = None,
        max_pending: int = 10_000,
        cpu_kv_cache_gib: int | None = None,
        observer: Observer | None = None,
        launcher: EngineLauncher | None = None,
        max_engines: int | None = None,
        replace_failed: bool = True,
        served_model_name: str | Sequence[str] | None = None,
        prefix_routing: bool = True,
        kv_events: bool = True,
    ) -> None:
        if config is None:
            config = PolicyConfig(policy, SLO(slo_ttft, slo_tpot), prefill_coeffs=prefill_coeffs,
                                  mitosis=autoscale or MitosisConfig(), autoscale=autoscale is not None)  # fmt: skip
        if (model is None) == (not engine_urls):
            raise ValueError("give either a model to launch engines for, or engine_urls to attach to (not both)")
        if launcher is not None and model is None:
            raise ValueError("a launcher needs the model it launches engines for")
        self.config = config
        self.served_model_names = served_names(served_model_name)
        self._rename: ModelRename | None = None  # set once the engines' own name is known
        self.model_path = str(model) if model is not None else None
        self.n_engines = engines
        self.engine_urls = list(engine_urls)
        self.autoscale = config.mitosis if config.autoscale else None
        self.log_dir = Path(log_dir) if log_dir else _default_log_dir()
        self.tokenizer_path = tokenizer or self.model_path
        self.observer: Observer = Observers(*([observer] if observer is not None else []))
        self.predictor = config.predictor()
        self.router = config.build_router(self.predictor)
        self.planner = config.planner()
        settings = LaunchSettings(
            self.model_path, list(engine_args), device=device, log_dir=self.log_dir, startup_timeout=startup_timeout,
            cpu_kv_cache_gib=cpu_kv_cache_gib, replace_failed=replace_failed,
            # The most engines that may run at once (a local launcher plans its cores or GPUs for this many).
            max_engines=max(engines, max_engines or 0, self.autoscale.max_instances if self.autoscale else 0),
        )  # fmt: skip
        self.prefixes = LivePrefixes(enabled=prefix_routing, kv_events=kv_events)
        self.fleet = Fleet(self, self.router, self.predictor, settings, launcher=launcher,
                           engine_api_key=engine_api_key, prefixes=self.prefixes,
                           chunked_step_budget=config.chunked_step_budget())  # fmt: skip
        self.admission = Admission(max_pending)
        self._flights: dict[str, Generation] = {}
        self._waiting: set[str] = set()  # submitted, not placed yet
        self._tokenizer: LocalTokenizer | EngineTokenizer | None = None
        self._tasks: list[asyncio.Task] = []
        self._ids = 0
        self._started = False
        self._accepting = True

    # ---- what the fleet and the server read ----------------------------------------
    @property
    def policy(self) -> str:
        return self.config.policy

    @property
    def slo(self) -> SLO:
        return self.config.slo

    @property
    def engines(self) -> dict[str, EngineRecord]:
        return self.fleet.engines

    @property
    def launcher(self) -> EngineLauncher | None:
        return self.fleet.launcher

    @property
    def served_model(self) -> str:
        """The model name replies report."""
        return self.served_model_names[0] if self.served_model_names else self.fleet.served_model

    @property
    def model_names(self) -> tuple[str, ...]:
        """Every name a request may use, ``served_model`` first."""
        return self.served_model_names or (self.fleet.served_model,)

    @property
    def engine_model(self) -> str:
        """The engines' own name for the model (sent to them; what vLLM's cards call ``root``)."""
        return self.fleet.served_model

    @property
    def max_model_len(self) -> int:
        return self.fleet.max_model_len

    @property
    def max_pending(self) -> int:
        return self.admission.max_pending

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.fleet.events

    # ---- lifecycle -----------------------------------------------------------------
    async def __aenter__(self) -> Coordinator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, on_progress: OnProgress | None = None) -> None:
        """Launch or attach the engines and start serving. ``on_progress(healthy,
        total, detail)`` hears how many launched engines are healthy while
        they start (``ecoserve serve`` draws it on stderr)."""
        tok_load: asyncio.Task | None = None
        try:
            launched: list[LaunchedEngine] = []
            if self.model_path is not None:
                launched = self.fleet.launch(self.n_engines)  # the tokenizer loads while engines start
            if self.tokenizer_path and Path(self.tokenizer_path).is_dir():
                self._tokenizer = LocalTokenizer(self.tokenizer_path)
                tok_load = asyncio.create_task(asyncio.to_thread(self._tokenizer.load))
            if launched:
                await self.fleet.wait_healthy(launched, on_progress)
            starting = [(e.id, e.url, e) for e in launched] + [(f"engine-{i}", u, None) for i, u in enumerate(self.engine_urls)]
            for k, (eid, url, e) in enumerate(starting):
                await self.fleet.attach(eid, url, e, macro=self.config.starting_macro(k, len(starting)))
            if tok_load is not None:
                try:
                    await tok_load
                except Exception as e:  # e.g. no transformers in a coordinator-only install
                    log.warning("cannot load the tokenizer from %s (%s); counting with the engines' /tokenize",
                                self.tokenizer_path, e)  # fmt: skip
                    self._tokenizer = None
            if self._tokenizer is None:
                first = next(iter(self.engines.values()))
                self._tokenizer = EngineTokenizer(first.handle, self.fleet.served_model)
            if self.served_model != self.fleet.served_model:
                self._rename = ModelRename(self.fleet.served_model, self.served_model)
            self._tasks.append(asyncio.create_task(self._ticker(), name="ecoserve-tick"))
            self._tasks.append(asyncio.create_task(self.fleet.health_monitor(), name="ecoserve-health"))
            if self.planner is not None:
                scaling = LiveScaling(self.planner, self.router, self.fleet, self.apply)
                self._tasks.append(asyncio.create_task(scaling.run(), name="ecoserve-autoscale"))
            self._started = True
        except BaseException:
            if tok_load is not None:
                tok_load.cancel()
            await self.stop()
            raise

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
        self.fleet.stopping, self._started = True, False  # refuse new requests from here on
        for g in list(self._flights.values()):
            g.fail(RequestError(503, "the server is shutting down"))
            g.interrupt()
        tasks = self._tasks + self.fleet.tasks()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        await self.fleet.close()
        self.fleet.stopping = False

    # ---- scaling (the admin API) ---------------------------------------------------
    async def add_engine(self, macro: int | None = None) -> str:
        """Launch one more engine, wait until it serves, and add it to the
        routing (to macro instance ``macro``: an index in ``layout()``, or
        ``len(layout())`` for a new one; default: where the policy adds).
        Returns its id. Raises ValueError when nothing can be launched here."""
        return await self.fleet.add_engine(macro)

    async def attach_engine(self, url: str, macro: int | None = None) -> str:
        """Add an already running engine (with the plugin) to the routing."""
        return await self.fleet.attach_engine(url, macro)

    async def remove_engine(self, eid: str) -> None:
        """Drain an engine: route nothing new to it, let what it holds finish,
        then stop it (ours) or let it go (attached). Never a kill."""
        await self.fleet.remove_engine(eid)

    def layout(self) -> list[dict[str, Any]]:
        """Macro instances in routing order, with their engines."""
        return layout(self.router)

    def split_macro(self, index: int) -> None:
        """Split macro instance ``index`` in two halves (moves handles only)."""
        name = self._macro_name(index)
        self.apply(self.router.split(index, time.monotonic()))
        self.fleet.event("split", name)

    def merge_macros(self, into: int, other: int) -> None:
        """Move every engine and pending request of macro ``other`` into ``into``."""
        self._macro_name(into)
        name = self._macro_name(other)
        self.apply(self.router.merge(into, other, time.monotonic()))
        self.fleet.event("merged", name)

    def _macro_name(self, index: int) -> str:
        if not self.router.has_macros:
            raise ValueError(f"the {self.policy} policy has no macro instances")
        names = self.router.group_names()
        if not 0 <= index < len(names):
            raise IndexError(f"no macro instance {index}; there are {len(names)}")
        return names[index]

    # ---- requests ------------------------------------------------------------------
    async def open(self, kind: str, body: dict[str, Any]) -> Generation:
        """Admit one OpenAI request (``kind`` ``completions`` or ``chat``), its
        body validated already (``ecoserve.openai.validation.validate``: the
        front door and the Python API's methods do), and return once an engine
        accepted it. Raises RequestError (4xx/5xx)."""
        arrival = time.monotonic()
        try:
            self._gate()
            assert self._tokenizer is not None
            adm = await self.admission.admit(kind, body, self._tokenizer, model=self.fleet.served_model,
                                             max_model_len=self.max_model_len, waiting=lambda: len(self._waiting),
                                             names=self.model_names)  # fmt: skip
        except RequestError as e:  # refused before it reached the policy
            self.observer.on_done(e.outcome, None, None)
            raise
        ids = adm.prompt_ids
        if ids is not None and len(ids) > INLINE_HASH_TOKENS:
            blocks = await asyncio.to_thread(self.prefixes.blocks_of, ids)
        else:
            blocks = self.prefixes.blocks_of(ids)
        self._ids += 1
        gen = Generation(self, f"eco-{self._ids}", kind, adm.upstream_body, keep_usage=adm.keep_usage,
                         keep_continuous=adm.keep_continuous, arrival=arrival, rename=self._rename)  # fmt: skip
        self._flights[gen.id] = gen
        self._waiting.add(gen.id)
        try:
            self.apply(self.router.submit(RequestState(gen.id, arrival, adm.prompt_tokens, adm.max_tokens,
                                                       blocks=blocks), time.monotonic()))  # fmt: skip
            await gen.wait_and_open()
        except BaseException as e:
            await gen.aclose("aborted" if isinstance(e, asyncio.CancelledError) else outcome_of(e))
            raise
        return gen

    def _gate(self) -> None:
        if not self._started:
            raise RequestError(503, "the coordinator is not running")
        if not self._accepting:
            raise RequestError(503, "the server is shutting down")
        if not self.fleet.any_available():
            raise RequestError(503, "no engine is available")

    # ---- what generations report (GenerationHost) ----------------------------------
    def handle_of(self, instance_id: str) -> EngineHandle:
        return self.engines[instance_id].handle

    def on_tokens(self, gen: Generation, count: int) -> None:
        now = time.monotonic()
        if gen.count_tokens(count, now) and self.planner is not None:
            self.planner.observe_ttft(now - gen.arrival, now)
        self.apply(self.router.on_tokens(gen.id, count, now))

    def on_finish(self, gen: Generation, outcome: str) -> None:
        self._flights.pop(gen.id, None)
        self._waiting.discard(gen.id)
        now = time.monotonic()
        self.apply(self.router.on_finish(gen.id, now))
        ttft = gen.first_token_at - gen.arrival if gen.first_token_at is not None else None
        self.observer.on_done(outcome, ttft, tpot_of(gen.first_token_at, now, gen.tokens))

    async def engine_broke(self, instance_id: str, why: str) -> None:
        await self.fleet.engine_broke(instance_id, why)

    # ---- what the fleet reports (FleetHost) ----------------------------------------
    def engine_failed(self, instance_id: str, why: str) -> int:
        requeued = 0
        for gen in list(self._flights.values()):
            if gen.instance_id != instance_id:
                continue
            if not gen.started:  # the router re-queues it: wait for a new placement
                gen.requeue()
                self._waiting.add(gen.id)
                requeued += 1
            else:
                gen.break_stream(why)
        return requeued

    def engine_steps(self, instance_id: str, steps: list[StepRecord]) -> None:
        self.observer.on_steps(instance_id, steps)

    def no_engine_left(self) -> None:
        """Waiting requests have nothing to wait for."""
        for rid in list(self._waiting):
            gen = self._flights.get(rid)
            if gen is not None:
                gen.fail(RequestError(503, "every engine has failed"))
        self._waiting.clear()

    # ---- carrying out the policy's actions -----------------------------------------
    def apply(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Routed):
                self.fleet.routed(a.instance_id)
                self.observer.on_routed(a.instance_id, a.reason)
                req = self.router.request(a.request_id)
                if req is not None and req.blocks:
                    self.prefixes.routed(a.instance_id, req.prompt_tokens, req.cached_tokens)
                gen = self._flights.get(a.request_id)
                if gen is not None:
                    self._waiting.discard(a.request_id)
                    gen.place(a.instance_id)
            elif isinstance(a, SetPhase):
                self.fleet.want_phase(a.instance_id, a.phase.value)
                self.observer.on_phase(a.instance_id, a.phase.value)
            elif isinstance(a, Queued):
                self.observer.on_queued(a.reason.value)
            elif isinstance(a, Rejected):
                gen = self._flights.get(a.request_id)
                if gen is not None:
                    self._waiting.discard(a.request_id)
                    gen.fail(RequestError(400, f"request rejected: {a.reason}", param="max_tokens"))
            elif isinstance(a, Drained):
                self.fleet.drained(a.instance_id)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            if self._waiting:
                self.apply(self.router.tick(time.monotonic()))

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
        gen = await self.open(kind, self._validated(kind, body))
        try:
            return await gen.result()
        finally:
            await gen.aclose()

    async def _chunks(self, kind: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        gen = await self.open(kind, self._validated(kind, body))
        try:
            async for batch in gen.payloads():
                for p in batch:
                    yield _dec.decode(p)
        finally:
            await gen.aclose()

    def _validated(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return validate(kind, body)
        except RequestError as e:
            self.observer.on_done(e.outcome, None, None)
            raise

    # ---- status --------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The ``/ecoserve/status`` document."""
        return {**status_document(policy=self.policy, slo=self.slo, fleet=self.fleet, router=self.router,
                                 predictor=self.predictor, pending=len(self._waiting), in_flight=len(self._flights),
                                 autoscale=self.autoscale), "model": self.served_model}  # fmt: skip


def _default_log_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ecoserve" / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
