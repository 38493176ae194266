"""A simulated engine (one instance: one model replica on TP GPUs).

Continuous batching at step granularity, with the scheduling behaviour of the
system it stands for (``mode``):

- ``vllm``: vLLM 0.7 (V0) default: separate batching with prefill priority.
  Each step either prefills as many waiting prompts as fit (token budget
  ``max_batched_tokens``, ``max_num_seqs``, KV) or, if none is admitted,
  decodes every running request. Never mixes the two.
- ``sarathi``: chunked prefill with decode priority (Sarathi-Serve, vLLM's
  ``enable_chunked_prefill``): every step decodes all running requests and
  fills the rest of a token budget with prompt chunks, oldest first; a prompt's
  KV is allocated whole at its first chunk (as V0 does).
- ``phased``: EcoServe's phase-aware engine. In ``PREFILL`` it runs only
  prefills (batched like ``vllm``; decodes pause and keep their KV); in
  ``DECODE`` only decodes; in ``CHUNKED`` as ``sarathi`` (the plugin's
  ``chunked`` phase); the phase is commanded from outside (the policy's
  ``SetPhase``). ``MIXED`` behaves as ``vllm``.
- ``prefill`` / ``decode``: the two pools of a fully disaggregated system. A
  prefill engine keeps a request's KV after its prefill until the driver
  releases it (transfer done); a decode engine receives requests with their
  KV already in place.

KV is counted in tokens (vLLM's 16-token blocks are not modelled). ``vllm``
and ``sarathi`` allocate on demand and preempt the most recently admitted
request when a decode step would not fit (recompute: its prompt and output so
far are prefilled again, and that prefill yields its next token); admission
keeps vLLM's 1% watermark free. ``phased`` and ``decode`` engines rely on the
reservations made by whoever routes to them, so they never preempt.

Decode-only stretches are simulated in segments of up to ``max_ff_steps``
steps at once (until the first request finishes) when the driver allows; any
change to the engine (new request, phase) cuts the segment at the step in
progress, so the result is step-for-step the same as simulating each step.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from typing import TYPE_CHECKING

from ecoserve.policy.chunk_budget import ChunkBudgetRule, least_slack
from ecoserve.policy.phase import Phase
from ecoserve.policy.prefix_index import PrefixIndex, leading_run
from ecoserve.policy.step_time import StepTimePredictor
from ecoserve.sim.engine_model import EngineModel
from ecoserve.sim.observer import StepRecord
from ecoserve.workload.traces import BLOCK_TOKENS

if TYPE_CHECKING:
    from ecoserve.sim.core import Simulator

MODES = ("vllm", "sarathi", "phased", "prefill", "decode")


class SimRequest:
    __slots__ = (
        "id", "arrival", "prompt", "output", "target", "prefilled", "generated", "kv", "first_token",
        "finish", "engine", "reported", "rejected", "prefill_engine", "decode_engine", "transfer_s",
        "preempted", "max_tokens", "blocks", "pooled",
    )

    def __init__(self, rid: str, arrival: float, prompt: int, output: int, max_tokens: int | None = None) -> None:
        self.id = rid
        self.arrival = arrival
        self.prompt = prompt
        self.output = output  # the true length: it finishes after this many tokens
        self.max_tokens = max_tokens or output  # its client's bound: what the policy reserves for
        self.blocks: tuple[int, ...] = ()  # its prompt's full-block hashes (prefix caching)
        self.pooled: tuple[int, ...] = ()  # of them, those it shares in its engine's KV (SimEngine._pool)
        self.target = prompt  # tokens to prefill (prompt, or prompt + output so far after preemption)
        self.prefilled = 0
        self.generated = 0  # output tokens produced so far
        self.kv = 0  # KV tokens held on its current engine
        self.first_token: float | None = None
        self.finish: float | None = None
        self.engine: SimEngine | None = None
        self.reported = 0  # output tokens reported to the router
        self.rejected = False
        self.prefill_engine: SimEngine | None = None
        self.decode_engine: SimEngine | None = None
        self.transfer_s = 0.0
        self.preempted = 0


class EngineStats:
    __slots__ = ("prefill_steps", "decode_steps", "mixed_steps", "busy_s", "preemptions", "phase_switches",
                 "prefill_tokens", "decode_tokens", "max_batch", "segments", "phase_violations",
                 "prompt_tokens_admitted", "cached_tokens")

    def __init__(self) -> None:
        self.prefill_steps = self.decode_steps = self.mixed_steps = 0
        self.phase_violations = 0  # phased engine: a step of the phase it was not in (must stay 0)
        self.busy_s = 0.0
        self.preemptions = self.phase_switches = 0
        self.prefill_tokens = self.decode_tokens = 0
        self.max_batch = 0
        self.segments = 0
        # Prefix caching: prompt (or recompute) tokens of every admission, and
        # how many of them the engine's prefix cache held.
        self.prompt_tokens_admitted = self.cached_tokens = 0

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


class SimEngine:
    def __init__(
        self,
        sim: Simulator,
        eid: str,
        model: EngineModel,
        mode: str,
        *,
        token_budget: int | None = None,
        budget_rule: ChunkBudgetRule | None = None,
        step_predictor: StepTimePredictor | None = None,
        max_num_seqs: int = 256,
        kv_capacity: int | None = None,
        node: int = 0,
        prefix_cache: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown engine mode {mode!r}")
        self.sim = sim
        self.id = eid
        self.model = model
        self.mode = mode
        self.node = node
        self.capacity = model.kv_capacity_tokens if kv_capacity is None else kv_capacity
        if self.capacity <= 0:
            raise ValueError(f"{eid}: the model leaves no KV memory ({model.name})")
        self.budget = token_budget or model.max_batched_tokens
        # tokens per chunked step (sarathi, or phased in CHUNKED); a phased engine's
        # PREFILL windows still batch up to the model's limit
        self.chunk_budget = self.budget
        if mode == "phased":
            self.budget = model.max_batched_tokens
        # sarathi-dyn: each step's prompt tokens from the decoders' slack (policy.chunk_budget),
        # predicted with the engine's own step-time predictor, corrected by its own steps
        if (budget_rule is None) != (step_predictor is None):
            raise ValueError("a budget rule needs a step-time predictor, and only with one")
        if budget_rule is not None and mode not in ("sarathi", "phased"):
            raise ValueError("a slack-derived chunk budget needs the sarathi or phased engine")
        self.budget_rule = budget_rule
        self.steps = step_predictor
        self.max_num_seqs = max_num_seqs
        self.on_demand = mode in ("vllm", "sarathi")
        self.watermark = int(0.01 * self.capacity) if self.on_demand else 0
        self.phase = Phase.DECODE if mode == "phased" else Phase.MIXED
        self.waiting: deque[SimRequest] = deque()  # no KV yet (or preempted)
        self.partial: deque[SimRequest] = deque()  # chunked prefill in progress (KV allocated)
        self.running: list[SimRequest] = []  # prefilled, decoding, in admission order
        self.kv_used = 0
        self.reserved = 0  # decode pool: KV promised to requests in transfer or running
        self.incoming = 0  # decode pool: requests whose KV is on its way
        self.queued_prefill = 0  # prompt tokens waiting or being prefilled here
        self.stats = EngineStats()
        # vLLM's automatic prefix caching: full blocks of computed prompts, LRU,
        # as many as the KV memory holds (the same structure the policy keeps
        # as its estimate of it, policy/prefix_index.py). Hits save compute,
        # and memory: running requests share the prompt blocks they have in
        # common, as vLLM's block pool does. ``_pool``: block -> requests using
        # it, for the blocks of prompts already computed; ``kv_used`` counts
        # every request's whole context (``r.kv``, also its attention span), so
        # ``kv_shared`` is what that counts twice: BLOCK_TOKENS x (uses - blocks).
        self.prefix_cache = PrefixIndex(max(1, self.capacity // BLOCK_TOKENS), BLOCK_TOKENS) if prefix_cache else None
        self._pool: dict[int, int] = {}
        self.kv_shared = 0
        # The step (or decode segment) in progress.
        self.busy = False
        self.version = 0
        self._ending = False
        self._chunks: list[tuple[SimRequest, int]] = []
        self._decode: list[SimRequest] = []
        self._start = 0.0
        self._ctx = 0  # decode context tokens of the step in progress
        self._ends: list[float] = []  # end time of each step of the segment
        self._flushed = 0  # steps of the segment already reported to the driver

    # -- inputs ------------------------------------------------------------------------

    def enqueue(self, req: SimRequest, now: float, kick: bool = True) -> None:
        req.engine = self
        self.waiting.append(req)
        self.queued_prefill += req.target - req.prefilled
        for o in self.sim.observers:
            o.on_enqueue(self.id, req, now)
        if kick:
            self.kick(now)

    def admit_decoding(self, req: SimRequest, now: float) -> None:
        """Decode pool: a request arrives with its prompt's KV (the transfer is done)."""
        req.engine = self
        req.kv = req.prompt + req.generated - 1
        self.kv_used += req.kv
        self.incoming -= 1
        self.running.append(req)
        for o in self.sim.observers:
            o.on_enqueue(self.id, req, now)
        self.kick(now)

    def release(self, req: SimRequest, now: float) -> None:
        """Prefill pool: the request's KV has left; free it."""
        self._free(req)
        self.kick(now)

    def set_phase(self, phase: Phase, now: float, kick: bool = True) -> None:
        if phase is self.phase:
            return
        for o in self.sim.observers:
            o.on_phase(self.id, self.phase, phase, now)
        self.phase = phase
        self.stats.phase_switches += 1
        if kick:
            self.kick(now)

    def kick(self, now: float) -> None:
        """Something changed: start a step if idle, or cut a decode segment short."""
        if self._ending:
            return  # the step end in progress plans next
        if not self.busy:
            self._begin(now)
        elif len(self._ends) > 1:
            self.truncate(now)

    def truncate(self, now: float) -> None:
        """End the current decode segment with the step in progress at ``now``."""
        ends = self._ends
        if len(ends) <= 1:
            return
        keep = bisect_left(ends, now) + 1  # steps ending before now, plus the one in progress
        if keep >= len(ends):
            return
        del ends[keep:]
        self.version += 1
        self.sim.schedule_step_end(self, ends[-1], self.version)

    def flush(self, now: float) -> None:
        """Report the tokens of segment steps completed by ``now`` (no state change)."""
        ends = self._ends
        if len(ends) <= 1 or not self._decode:
            return
        done = bisect_right(ends, now)
        if done > self._flushed:
            self.sim.driver.on_tokens(self, self._decode, done - self._flushed, now)
            self._flushed = done

    # -- planning ----------------------------------------------------------------------

    @property
    def kv_free(self) -> int:
        return self.capacity - self.kv_used + self.kv_shared

    def _shareable(self, r: SimRequest) -> int:
        """Tokens of ``r``'s prompt it would share from the KV of running requests
        (whole leading blocks, never the one of its last token)."""
        if not self._pool or not r.blocks:
            return 0
        return leading_run(r.blocks[: (r.target - 1) // BLOCK_TOKENS], self._pool) * BLOCK_TOKENS

    def _allocate(self, r: SimRequest) -> None:
        """Admission: KV for its whole context, sharing the pooled blocks it starts with."""
        self.kv_used += r.target
        r.kv = r.target
        n = self._shareable(r) // BLOCK_TOKENS
        if n:
            r.pooled = r.blocks[:n]
            for b in r.pooled:
                self._pool[b] += 1
            self.kv_shared += n * BLOCK_TOKENS

    def _pool_prompt(self, r: SimRequest) -> None:
        """Its prompt is computed: its own full blocks become shareable (a block
        another request computed at the same time stays its private copy)."""
        pool = self._pool
        mine = tuple(b for b in r.blocks[len(r.pooled) :] if b not in pool)
        for b in mine:
            pool[b] = 1
        r.pooled += mine

    def _free(self, r: SimRequest) -> None:
        """Its KV leaves: its context, and its uses of pooled blocks."""
        self.kv_used -= r.kv
        r.kv = 0
        pool = self._pool
        for b in r.pooled:
            if pool[b] == 1:
                del pool[b]
            else:
                pool[b] -= 1
                self.kv_shared -= BLOCK_TOKENS
        r.pooled = ()

    def _take_prefills(self) -> list[tuple[SimRequest, int]]:
        """Whole prompts, oldest first, within the token budget, seat and KV limits."""
        chunks: list[tuple[SimRequest, int]] = []
        tokens = 0
        seats = self.max_num_seqs - len(self.running)
        waiting = self.waiting
        while waiting and seats > 0:
            r = waiting[0]
            need = r.target
            if chunks and tokens + need > self.budget:
                break
            if need - self._shareable(r) > self.kv_free - self.watermark:
                break
            waiting.popleft()
            self._allocate(r)
            self._reuse_prefix(r)
            chunks.append((r, need - r.prefilled))
            tokens += need
            seats -= 1
        return chunks

    def _reuse_prefix(self, r: SimRequest) -> None:
        """Admission: what of the prompt the prefix cache holds is not computed
        again (its attention context still counts: it starts at ``prefilled``)."""
        self.stats.prompt_tokens_admitted += r.target
        if self.prefix_cache is None or not r.blocks or r.prefilled:
            return
        cached = self.prefix_cache.cached_tokens(r.blocks, r.target)
        r.prefilled = cached
        self.queued_prefill -= cached
        self.stats.cached_tokens += cached

    def _take_chunks(self, budget: int, seats: int) -> list[tuple[SimRequest, int]]:
        """Sarathi: continue partial prompts, then start new ones, within ``budget`` tokens."""
        chunks: list[tuple[SimRequest, int]] = []
        for r in self.partial:
            if budget <= 0:
                return chunks
            n = min(r.target - r.prefilled, budget)
            chunks.append((r, n))
            budget -= n
        waiting = self.waiting
        while waiting and budget > 0 and seats > 0:
            r = waiting[0]
            if r.target - self._shareable(r) > self.kv_free - self.watermark:
                break
            waiting.popleft()
            self._allocate(r)
            self._reuse_prefix(r)
            self.partial.append(r)
            n = min(r.target - r.prefilled, budget)
            chunks.append((r, n))
            budget -= n
            seats -= 1
        return chunks

    def _decode_batch(self) -> list[SimRequest]:
        running = self.running
        if not running:
            return running
        if self.on_demand:
            while len(running) > self.kv_free and len(running) > 1:
                self._preempt(running.pop())
        return running

    def _preempt(self, r: SimRequest) -> None:
        """vLLM recompute preemption: drop its KV, prefill prompt + output so far again."""
        self._free(r)
        r.target = r.prompt + r.generated
        r.prefilled = 0
        r.preempted += 1
        self.waiting.appendleft(r)
        self.queued_prefill += r.target
        self.stats.preemptions += 1

    def _prompt_budget(self, decode: list[SimRequest], now: float) -> int:
        """Prompt tokens of the next chunked step: the static budget less the
        decodes, or (sarathi-dyn) what the least-slack decoder can absorb."""
        rule = self.budget_rule
        if rule is None:
            return self.chunk_budget - len(decode)
        ctx = sum(r.kv for r in decode) + len(decode)
        slack = least_slack(((r.generated, r.first_token) for r in decode if r.first_token is not None), now, rule.tpot)
        return rule.prompt_budget(slack, len(decode), ctx, self.steps)

    def _plan(self, now: float) -> tuple[list[tuple[SimRequest, int]], list[SimRequest]]:
        mode = self.mode
        if mode == "sarathi" or (mode == "phased" and self.phase is Phase.CHUNKED):  # CHUNKED: as sarathi
            decode = self._decode_batch()
            seats = self.max_num_seqs - len(decode) - len(self.partial)
            return self._take_chunks(self._prompt_budget(decode, now), seats), decode
        if mode == "decode":
            return [], self.running
        if mode == "prefill" or (mode == "phased" and self.phase is Phase.PREFILL):
            if self.partial:  # prompts a CHUNKED phase began: the window finishes them first
                seats = self.max_num_seqs - len(self.running) - len(self.partial)
                return self._take_chunks(self.model.max_batched_tokens, seats), []
            return self._take_prefills(), []
        if mode == "phased" and self.phase is Phase.DECODE:
            return [], self._decode_batch()
        chunks = self._take_prefills()  # vllm, or phased in MIXED
        if chunks:
            return chunks, []
        return [], self._decode_batch()

    def _begin(self, now: float) -> None:
        chunks, decode = self._plan(now)
        if not chunks and not decode:
            self.busy = False
            self._chunks, self._decode, self._ends = [], [], []
            return
        decode = list(decode)
        model = self.model
        B = len(decode)
        ctx = 0
        for r in decode:
            ctx += r.kv
        ctx += B
        st = self.stats
        if B > st.max_batch:
            st.max_batch = B
        if self.mode == "phased" and self.phase not in (Phase.MIXED, Phase.CHUNKED):
            if (chunks and self.phase is not Phase.PREFILL) or (decode and self.phase is not Phase.DECODE):
                st.phase_violations += 1
        self._ctx = ctx
        if chunks:
            k = 1
            t = now + model.step_time([(n, r.prefilled) for r, n in chunks], B, ctx)
            ends = [t]
        else:
            k = 1
            if self.sim.fast_forward and not self.sim.driver.fine_grained:
                k = min(r.output - r.generated for r in decode)
                if self.on_demand:
                    k = min(k, self.kv_free // B)
                k = max(1, min(k, self.sim.max_ff_steps))
            ends = []
            t = now
            step = model.decode_step
            for _ in range(k):
                t += step(B, ctx)
                ctx += B
                ends.append(t)
        self.busy = True
        self._chunks, self._decode, self._ends = chunks, decode, ends
        self._start = now
        self._flushed = 0
        self.version += 1
        st.segments += 1
        self.sim.schedule_step_end(self, ends[-1], self.version)

    # -- step end ----------------------------------------------------------------------

    def step_end(self, now: float, version: int) -> None:
        if version != self.version:
            return  # superseded by a truncation
        self._ending = True
        driver = self.sim.driver
        chunks, decode, k = self._chunks, self._decode, len(self._ends)
        st = self.stats
        st.busy_s += now - self._start
        if self.sim.observers:
            rec = StepRecord(self.id, self._start, now, k, tuple((r.id, n) for r, n in chunks),
                             tuple(r.id for r in decode))
            for o in self.sim.observers:
                o.on_step(rec)
        if chunks and not decode:  # a pure prefill step (one step: fast-forward runs decodes only)
            driver.on_step(self, "prefill", sum(n for _, n in chunks), now - self._start, len(chunks))
        if self.steps is not None:  # the engine's own predictor learns from its steps (a segment: its first)
            first = (self._ends[0] if self._ends else now) - self._start
            self.steps.observe_step(sum(n for _, n in chunks), len(decode), self._ctx, first, max(1, len(chunks)))
        finished: list[SimRequest] = []
        if chunks:
            st.prefill_steps += 1 if not decode else 0
            st.mixed_steps += 1 if decode else 0
        else:
            st.decode_steps += k
        if decode:
            B = len(decode)
            self.kv_used += B * k
            st.decode_tokens += B * k
            for r in decode:
                r.generated += k
                r.kv += k
                if r.generated >= r.output:
                    finished.append(r)
            if k > self._flushed:
                driver.on_tokens(self, decode, k - self._flushed, now)
        done_prefill: list[SimRequest] = []
        for r, n in chunks:
            r.prefilled += n
            self.queued_prefill -= n
            st.prefill_tokens += n
            if r.prefilled >= r.target:
                done_prefill.append(r)
                if self.prefix_cache is not None and r.blocks:
                    self.prefix_cache.insert(r.blocks)  # its full blocks are cached from now on
                    self._pool_prompt(r)
        if done_prefill:
            partial = self.partial
            for r in done_prefill:
                if partial and partial[0] is r:
                    partial.popleft()
                elif r in partial:
                    partial.remove(r)
                r.generated += 1
                if r.first_token is None:
                    r.first_token = now
                    self.sim.note_first_token(r, now)
                if self.mode == "prefill":
                    driver.on_prefilled(self, r, now)
                    continue
                if r.generated >= r.output:
                    finished.append(r)
                else:
                    self.running.append(r)
                driver.on_tokens(self, (r,), 1, now)
        if finished:
            fin = set(finished)
            self.running = [r for r in self.running if r not in fin]
            for r in finished:
                self._free(r)
                r.finish = now
                self.sim.note_finish(r, now)
                driver.on_finish(self, r, now)
        self._ending = False
        self.busy = False
        self._begin(now)
