"""EcoServe's phase-aware scheduler: a thin subclass of vLLM's V1 Scheduler.

Select it with ``--scheduler-cls vllm_plugin.scheduler.EcoServeScheduler``; the
async variant is picked automatically when vLLM runs with async scheduling.

vLLM's ``schedule()`` runs the RUNNING queue first, then admits WAITING
requests. Instead of re-implementing it, each step is planned (phases.py) and
the plan is enforced with levers vLLM already honours, so all of vLLM's
bookkeeping (KV allocation, preemption, connectors, stats) stays stock:
- keep a running request out of this step: push its
  ``next_decode_eligible_step`` past the step about to run;
- admit nothing new for this one call: ``_pause_state = PAUSED_NEW``, restored
  right after, so vLLM's own pause API is untouched;
- an engine whose work the phase forbids must sleep, not spin on empty steps:
  ``get_num_unfinished_requests`` hides that work, and the loop blocks on its
  input queue until a request, an abort or a command arrives;
- ``chunked``: every decode plus at most B prompt tokens (budget.py). vLLM reads
  ``max_num_scheduled_tokens`` afresh in every ``schedule()``: set to the decodes
  plus B around the call. Running requests are served in order, partial
  prefills included, so a partial prefill before the decodes could take the
  whole budget: every partial prefill but the first sits the step out, and
  ``long_prefill_token_threshold`` (also read per call) caps that one at B.
  With ``ECOSERVE_LOST_YIELD=1`` a partial prefill that would miss its TTFT even
  in one step of the engine's limit sits out too, while another prompt can
  still meet its own (budget.py ``yielding``).
Everything here runs on the EngineCore main thread.
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
import time

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.interface import PauseState
from vllm.v1.core.sched.scheduler import Scheduler

from ecoserve.protocol import PHASES, EngineStatus, PrefixCaching
from vllm_plugin.budget import EngineBudget
from vllm_plugin.control import Controller, install_engine_core_methods
from vllm_plugin.phases import StepPlan, plan_step
from vllm_plugin.steps import StepRecorder
from vllm_plugin.version import check_vllm_version

VLLM_VERSION = check_vllm_version()
install_engine_core_methods()


def _calling_engine_core():
    """The EngineCore constructing us (vLLM passes no reference). Found on the
    call stack; None in unusual embeddings, which only costs idle wake-ups for
    ZeroMQ commands (the HTTP path wakes the engine by itself)."""
    frame = sys._getframe(1)
    for _ in range(8):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if owner is not None and hasattr(owner, "input_queue") and hasattr(owner, "model_executor"):
            return owner
        frame = frame.f_back
    return None


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class EcoServeSchedulerMixin:
    """The EcoServe behaviour, on top of Scheduler or AsyncScheduler."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        initial = os.environ.get("ECOSERVE_PHASE", "temporal")
        if initial not in PHASES:
            raise ValueError(f"ECOSERVE_PHASE={initial!r}; expected one of {PHASES}")
        now = time.time()
        self.eco_phase: str = initial
        self.eco_phase_since = now
        self.eco_activity = "idle"
        self.eco_activity_since = now
        self.eco_engine_id = os.environ.get("ECOSERVE_ENGINE_ID") or f"{socket.gethostname()}:{os.getpid()}"
        self.eco_steps = StepRecorder()
        self._eco_seq = 0
        # Admission signature at which a planned prefill step admitted nothing
        # for a reason the estimate does not see (e.g. a grammar still compiling).
        self._eco_blocked_at: tuple | None = None
        self.eco_budget = EngineBudget(self.max_num_scheduled_tokens)
        self.eco_control = Controller(self, _calling_engine_core())
        self.eco_prefix_caching = _prefix_caching(self.vllm_config)

    # ---- phase control -------------------------------------------------------
    def eco_set_phase(self, phase: str) -> None:
        if phase != self.eco_phase:
            self.eco_phase = phase
            self.eco_phase_since = time.time()
            self._eco_blocked_at = None
            self._eco_note_activity(None, self.eco_phase_since)
            self.eco_control.publish(self.eco_status(recent=False))

    def _eco_note_activity(self, kind: str | None, when: float) -> None:
        """After a step of `kind` (None: no step), or a phase change."""
        if self.get_num_unfinished_requests() == 0:  # nothing it would run next
            activity, when = "idle", time.time()
        elif kind is None or kind == "empty":
            return  # unchanged until the next real step
        else:
            activity = kind
        if activity != self.eco_activity:
            self.eco_activity = activity
            self.eco_activity_since = when

    def _eco_admission_signature(self) -> tuple:
        head = self._eco_waiting_head()
        return (
            self.kv_cache_manager.block_pool.get_num_free_blocks(),
            len(self.running),
            head.request_id if head is not None else None,
        )

    def _eco_waiting_queues(self) -> tuple:
        """vLLM's queues of requests not yet admitted, in the order it admits them."""
        return self.kv_holding_waiting, self.waiting

    def _eco_waiting_head(self):
        for queue in self._eco_waiting_queues():
            if queue:
                return queue.peek_request()
        return None

    def _eco_head_fits(self) -> bool:
        """Could the head of the waiting queue be admitted now? A conservative
        estimate (ignores prefix-cache hits); with nothing running it is always
        tried, as stock vLLM would."""
        head = self._eco_waiting_head()
        if head is None:
            return False
        if not self.running:
            return True
        if len(self.running) + self.num_waiting_for_streaming_input >= self.max_num_active_reqs:
            return False
        tokens = min(head.num_tokens - head.num_computed_tokens, self.max_num_scheduled_tokens)
        need = _cdiv(max(tokens, 1), self.block_size) + self.kv_cache_manager.watermark_blocks
        return need <= self.kv_cache_manager.block_pool.get_num_free_blocks()

    def eco_plan(self) -> StepPlan:
        if self.eco_phase == "mixed":
            return StepPlan.STOCK
        if self.eco_phase == "chunked":
            return StepPlan.CHUNKED
        partial = decoding = False
        for req in self.running:
            if req.is_prefill_chunk:
                partial = True
            else:
                decoding = True
            if partial and decoding:
                break
        blocked = self._eco_blocked_at is not None and self._eco_blocked_at == self._eco_admission_signature()
        can_prefill = partial or (not blocked and self._eco_head_fits())
        plan = plan_step(self.eco_phase, can_prefill=can_prefill, can_decode=decoding)
        if plan is StepPlan.IDLE and blocked and self.eco_phase != "decode":
            # Blocked for a reason we cannot see: keep retrying like stock vLLM
            # rather than sleep through the moment it clears.
            plan = StepPlan.PREFILL
        return plan

    # ---- vLLM scheduler hooks ------------------------------------------------
    def has_requests(self) -> bool:
        # EngineCore asks this before every schedule() and whenever its idle
        # loop wakes up: the place where ZeroMQ commands are applied, on the
        # engine thread.
        self.eco_control.drain()
        return super().has_requests()

    def get_num_unfinished_requests(self) -> int:
        num = super().get_num_unfinished_requests()
        if num and self.eco_phase not in ("mixed", "chunked") and self.eco_plan() is StepPlan.IDLE:
            return 0  # hide work the phase forbids, so the loop sleeps
        return num

    def schedule(self, throttle_prefills: bool = False):
        t0, wall = time.perf_counter(), time.time()
        plan = self.eco_plan()
        if plan is StepPlan.STOCK:
            output = super().schedule(throttle_prefills)
        elif plan is StepPlan.CHUNKED:
            output = self._eco_schedule_chunked(throttle_prefills)
        else:
            output = self._eco_schedule(plan, throttle_prefills)
            if plan is StepPlan.PREFILL and output.total_num_scheduled_tokens == 0:
                self._eco_blocked_at = self._eco_admission_signature()
            elif output.total_num_scheduled_tokens:
                self._eco_blocked_at = None
        self.eco_steps.begin(output, self.requests, wall, t0)
        return output

    def _eco_schedule(self, plan: StepPlan, throttle_prefills: bool):
        # super().schedule() increments current_step before checking eligibility.
        hold_until = self.current_step + 2
        for req in self.running:
            # PREFILL holds decodes, DECODE holds partial prefills, IDLE holds all.
            if plan is StepPlan.IDLE or req.is_prefill_chunk == (plan is StepPlan.DECODE):
                req.next_decode_eligible_step = max(req.next_decode_eligible_step, hold_until)
        saved = self._pause_state
        if plan is StepPlan.IDLE:
            # Only reached to flush finished-request bookkeeping: schedule nothing.
            self._pause_state = PauseState.PAUSED_ALL
        elif plan is StepPlan.DECODE and saved == PauseState.UNPAUSED:
            self._pause_state = PauseState.PAUSED_NEW
        try:
            return super().schedule(throttle_prefills)
        finally:
            self._pause_state = saved

    def _eco_schedule_chunked(self, throttle_prefills: bool):
        budget = self.eco_budget.prompt_budget(self.running, waiting=itertools.chain(*self._eco_waiting_queues()))
        if budget is None:  # no commanded budget and no SLO: stock
            return super().schedule(throttle_prefills)
        hold_until = self.current_step + 2
        decodes, seen_partial = 0, budget == 0  # no prompt tokens: every partial prefill sits out
        yielding = self.eco_budget.yielding  # lost prompts, while others can still meet their TTFT
        for req in self.running:
            if not req.is_prefill_chunk:
                decodes += 1
            elif seen_partial or req.request_id in yielding:
                req.next_decode_eligible_step = max(req.next_decode_eligible_step, hold_until)
            else:
                seen_partial = True
        cfg = self.scheduler_config
        saved = self.max_num_scheduled_tokens, cfg.long_prefill_token_threshold, self.adaptive_long_prefill_threshold
        self.max_num_scheduled_tokens = max(1, min(saved[0], decodes + budget))
        cfg.long_prefill_token_threshold = max(1, budget)
        self.adaptive_long_prefill_threshold = False
        try:
            return super().schedule(throttle_prefills)
        finally:
            self.max_num_scheduled_tokens, cfg.long_prefill_token_threshold, self.adaptive_long_prefill_threshold = saved

    def update_from_output(self, scheduler_output, model_runner_output):
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        self.eco_budget.note_outputs(self.requests, scheduler_output.num_scheduled_tokens)
        record = self.eco_steps.finish(scheduler_output)
        if record is not None:
            self.eco_budget.observe(record)
            self._eco_note_activity(record.kind, record.start)
            self.eco_control.publish(self.eco_status(recent=False))
        return outputs

    def shutdown(self) -> None:
        self.eco_control.close()
        super().shutdown()

    # ---- status --------------------------------------------------------------
    def eco_status(self, recent: bool) -> EngineStatus:
        """Exact counts, taken on the engine thread. ``recent``: attach the last
        records (replies) instead of the ones not yet pushed (pushes)."""
        prefilling = sum(1 for req in self.running if req.is_prefill_chunk)
        num_running, num_waiting = self.get_request_counts()
        pool = self.kv_cache_manager.block_pool
        self._eco_seq += 1
        return EngineStatus(
            engine_id=self.eco_engine_id,
            seq=self._eco_seq,
            time=time.time(),
            phase=self.eco_phase,
            phase_since=self.eco_phase_since,
            activity=self.eco_activity,
            activity_since=self.eco_activity_since,
            step=self.eco_steps.num_steps,
            num_waiting=num_waiting - self.num_waiting_for_streaming_input,
            num_prefilling=prefilling,
            num_decoding=num_running - prefilling,
            kv_blocks_free=pool.get_num_free_blocks(),
            kv_blocks_total=pool.num_gpu_blocks - 1,  # minus vLLM's null block
            block_size=self.block_size,
            max_num_seqs=self.max_num_running_reqs,
            max_num_batched_tokens=self.max_num_scheduled_tokens,
            steps=list(self.eco_steps.recent) if recent else self.eco_steps.take_unsent(),
            addresses=self.eco_control.addresses,
            vllm_version=VLLM_VERSION,
            prompt_budget=self.eco_budget.last if self.eco_phase == "chunked" else None,
            prefix_caching=self.eco_prefix_caching,
        )


def _prefix_caching(vllm_config) -> PrefixCaching | None:
    """What a coordinator needs to know of this engine's prefix cache to
    compute its block hashes and follow its KV-cache events (ZeroMQ only)."""
    cache = vllm_config.cache_config
    if not cache.enable_prefix_caching:
        return None
    events = vllm_config.kv_events_config
    endpoint = ""
    if events is not None and events.enable_kv_cache_events and events.publisher == "zmq":
        endpoint = events.endpoint
    return PrefixCaching(hash_algo=str(cache.prefix_caching_hash_algo),
                         hash_seed=os.environ.get("PYTHONHASHSEED", ""), kv_events=endpoint)  # fmt: skip


class EcoServeScheduler(EcoServeSchedulerMixin, Scheduler):
    """Pass this to ``--scheduler-cls``; it becomes EcoServeAsyncScheduler by
    itself when async scheduling is on (the GPU default)."""

    def __new__(cls, *args, **kwargs):
        config = kwargs.get("vllm_config", args[0] if args else None)
        if cls is EcoServeScheduler and config is not None and config.scheduler_config.async_scheduling:
            cls = EcoServeAsyncScheduler
        return super().__new__(cls)


class EcoServeAsyncScheduler(EcoServeScheduler, AsyncScheduler):
    pass

