"""Bookkeeping every router shares: instances in routing order, requests,
KV reservations, the FIFO pending queue and its re-offering, draining and
failures. Subclasses supply only the decision: where a request may go now."""

from __future__ import annotations

from abc import abstractmethod
from collections import deque
from collections.abc import Iterable

from ecoserve.policy.actions import Action, Constraint, Drained, Queued, Rejected, Routed
from ecoserve.policy.instance import InstanceState
from ecoserve.policy.phase import Phase
from ecoserve.policy.request import RequestState
from ecoserve.policy.router import Router


class TrackingRouter(Router):
    # The phase instances run in under this router (or rest in, between the
    # windows it commands); None: the instance's own (EcoServe starts them in DECODE).
    instance_phase: Phase | None = None

    def __init__(self) -> None:
        self._instances: dict[str, InstanceState] = {}
        self._order: list[str] = []
        self._requests: dict[str, RequestState] = {}  # routed, unfinished
        self._pending: deque[RequestState] = deque()
        self._pending_ids: set[str] = set()
        self._max_cap: int | None = None

    # -- the decision, per policy ------------------------------------------------

    @abstractmethod
    def choose(self, req: RequestState, now: float) -> tuple[InstanceState | None, Constraint | str]:
        """Where ``req`` may go now: (instance, reason it was chosen) or
        (None, the constraint that kept it out)."""

    def choose_without_affinity(self, req: RequestState, now: float) -> tuple[InstanceState | None, Constraint | str]:
        """``choose`` without trying the holders of ``req``'s cached prefix first:
        for a caller that tried them already (``OverallScheduler``'s detours)."""
        return self.choose(req, now)

    def admits(self, inst: InstanceState, req: RequestState, now: float) -> Constraint | None:
        """Whether ``inst`` may take ``req`` now (None) or what keeps it out.
        Used to re-offer the queue to the one instance whose state changed."""
        return None if inst.accepting else Constraint.NO_INSTANCE

    def kv_need(self, req: RequestState, inst: InstanceState | None = None) -> int:
        """KV tokens ``req`` reserves once routed (to ``inst``: besides the prompt
        blocks it shares there, ``InstanceState.shared_tokens``)."""
        shared = inst.shared_tokens(req) if inst is not None else 0
        return req.prompt_tokens - shared + req.max_output_tokens

    def never_fits(self, req: RequestState) -> str | None:
        """Why ``req`` can never be served by any current instance, or None."""
        return unfit_reason(self.kv_need(req), req, self.max_capacity())

    def max_capacity(self) -> int | None:
        """KV capacity of the largest instance (cached: it changes only with the
        set of instances; call ``capacity_changed`` after editing one by hand)."""
        if self._max_cap is None and self._instances:
            self._max_cap = max(i.kv_capacity_tokens for i in self._instances.values())
        return self._max_cap

    def capacity_changed(self) -> None:
        self._max_cap = None

    def took(self, inst: InstanceState) -> None:
        """Hook: ``inst`` took a request (routers that remember the last taker)."""

    def on_placing(self, inst: InstanceState, req: RequestState, now: float) -> tuple[list[Action], bool]:
        """Hook: ``req`` is about to be placed on ``inst``. Returns actions and
        whether it joins the instance's prefill window."""
        return [], False

    def on_started(self, inst: InstanceState, req: RequestState, now: float) -> list[Action]:
        """Hook: ``req`` produced its first token."""
        return []

    def on_left(self, inst: InstanceState, req: RequestState, now: float) -> list[Action]:
        """Hook: ``req`` finished or was aborted on ``inst``."""
        return []

    # -- Router ------------------------------------------------------------------

    def instances(self) -> list[InstanceState]:
        return [self._instances[i] for i in self._order]

    def instance(self, instance_id: str) -> InstanceState | None:
        return self._instances.get(instance_id)

    def pending(self) -> list[RequestState]:
        return list(self._pending)

    def pending_len(self) -> int:
        return len(self._pending)

    def pending_head(self) -> RequestState | None:
        return self._pending[0] if self._pending else None

    def request(self, request_id: str) -> RequestState | None:
        req = self._requests.get(request_id)
        if req is None and request_id in self._pending_ids:
            req = next(r for r in self._pending if r.id == request_id)
        return req

    def add_instance(self, inst: InstanceState, now: float, macro: int | None = None) -> list[Action]:
        if macro not in (None, 0):
            raise ValueError(f"{type(self).__name__} has one group of instances: no macro instance {macro}")
        if inst.id in self._instances:
            raise ValueError(f"instance {inst.id} is already routed to")
        self._instances[inst.id] = inst
        self._order.append(inst.id)
        self._max_cap = None
        if self.instance_phase is not None and inst.window_start is None:  # not mid-window
            inst.phase = self.instance_phase
        for req in inst.requests.values():  # an instance moved in with its requests
            self._requests[req.id] = req
        return self.reoffer(now)

    def detach_instance(self, instance_id: str) -> InstanceState:
        """Take an instance out, with its requests, to hand it to another router
        (a macro-instance split or merge). No request moves off the instance."""
        inst = self._instances.pop(instance_id)
        self._order.remove(instance_id)
        self._max_cap = None
        for rid in inst.requests:
            del self._requests[rid]
        return inst

    def remove_instance(self, instance_id: str, now: float) -> list[Action]:
        inst = self._instances[instance_id]
        inst.draining = True
        if not inst.requests:
            self.detach_instance(instance_id)
            return [Drained(instance_id), *self.reject_unfit()]
        return []

    def fail_instance(self, instance_id: str, now: float) -> list[Action]:
        inst = self.detach_instance(instance_id)
        inst.healthy = False
        unstarted = sorted((r for r in inst.requests.values() if not r.started), key=lambda r: r.arrival)
        for req in reversed(unstarted):  # back to the head, oldest first
            req.routed_at = req.instance_id = req.window = None
            req.trickled = False
            req.kv_reserved = 0
            req.pooled = ()
            self._pending.appendleft(req)
            self._pending_ids.add(req.id)
        inst.requests.clear()
        return self.reject_unfit() + self.reoffer(now)

    def reject_unfit(self) -> list[Action]:
        """After instances left: reject the pending requests none can hold now."""
        actions: list[Action] = []
        if not self._instances:
            return actions  # instances may still come: keep them pending
        for req in list(self._pending):
            why = self.never_fits(req)
            if why is not None:
                self._pending_ids.discard(req.id)
                self._pending.remove(req)
                actions.append(Rejected(req.id, why))
        return actions

    def submit(self, req: RequestState, now: float) -> list[Action]:
        if req.id in self._requests or req.id in self._pending_ids:
            raise ValueError(f"request {req.id} was already submitted")
        why = self.never_fits(req)
        if why is not None:
            return [Rejected(req.id, why)]
        if self._pending:  # FIFO: never overtake a request that is waiting
            self.enqueue(req)
            return [Queued(req.id, Constraint.QUEUE)]
        actions, failed = self.try_route(req, now)
        if failed is not None:
            self.enqueue(req)
            return [Queued(req.id, failed)]
        return actions

    def try_route(
        self, req: RequestState, now: float, only: InstanceState | None = None, *, affinity: bool = True
    ) -> tuple[list[Action], Constraint | None]:
        """Place ``req`` now if the policy allows, without queueing it; with
        ``only``, consider that one instance alone; ``affinity`` False:
        ``choose_without_affinity``."""
        if only is None:
            inst, reason = self.choose(req, now) if affinity else self.choose_without_affinity(req, now)
            if inst is None:
                assert isinstance(reason, Constraint)
                return [], reason
        else:
            failed = self.admits(only, req, now)
            if failed is not None:
                return [], failed
            inst, reason = only, "fits"
            self.took(inst)
        return self.place_on(inst, req, now, str(reason)), None

    def place_on(self, inst: InstanceState, req: RequestState, now: float, reason: str) -> list[Action]:
        """Route ``req`` to ``inst``, which the policy chose (``reason``)."""
        req.routed_at = now
        req.instance_id = inst.id
        req.kv_reserved = self.kv_need(req, inst)
        extra, in_window = self.on_placing(inst, req, now)
        inst.place(req, in_window)
        self._requests[req.id] = req
        return [Routed(req.id, inst.id, reason), *extra]

    def on_progress(self, progress: Iterable[tuple[str, int]], now: float) -> list[Action]:
        actions: list[Action] = []
        touched: dict[str, InstanceState] = {}
        for request_id, count in progress:
            req = self._requests.get(request_id)
            if req is None or count <= 0:
                continue  # finished or unknown: late chunks are harmless
            inst = self._instances[req.instance_id]
            touched[inst.id] = inst
            if req.first_token_at is None:
                req.first_token_at = now
                req.tokens_out += count
                inst.start(req)
                actions += self.on_started(inst, req, now)
            else:
                inst.add_tokens(req, count)
        # Only these instances changed (more slack, maybe a closed window): offer
        # the queue to them alone; tick() re-offers to all as time passes.
        if self._pending:
            for inst in touched.values():
                actions += self.reoffer(now, only=inst)
        return actions

    def on_finish(self, request_id: str, now: float) -> list[Action]:
        if request_id in self._pending_ids:
            self._pending_ids.discard(request_id)
            self._pending = deque(r for r in self._pending if r.id != request_id)
            return self.reoffer(now)
        req = self._requests.pop(request_id, None)
        if req is None:
            return []
        req.finished_at = now
        inst = self._instances[req.instance_id]
        inst.leave(req)
        actions = self.on_left(inst, req, now)
        if inst.draining and not inst.requests:
            self.detach_instance(inst.id)
            actions.append(Drained(inst.id))
            return actions + self.reject_unfit()
        return actions + self.reoffer(now, only=inst) if self._pending else actions

    def tick(self, now: float) -> list[Action]:
        return self.reoffer(now)

    # -- pending queue -------------------------------------------------------------

    def enqueue(self, req: RequestState) -> None:
        self._pending.append(req)
        self._pending_ids.add(req.id)

    def pop_pending_head(self) -> RequestState:
        req = self._pending.popleft()
        self._pending_ids.discard(req.id)
        return req

    def reoffer(self, now: float, only: InstanceState | None = None) -> list[Action]:
        """Offer the queue to the instances (or to ``only``), oldest first; stop
        at the first request that still does not fit, so the order stays FIFO."""
        actions: list[Action] = []
        while self._pending:
            head = self._pending[0]
            placed, failed = self.try_route(head, now, only)
            if failed is not None:
                break
            self.pop_pending_head()
            actions += placed
        return actions


def unfit_reason(need: int, req: RequestState, capacity: int | None) -> str | None:
    """Why a request needing ``need`` KV tokens can never run, or None. With no
    instance at all (capacity None) it may still: instances can come."""
    if capacity is None or need <= capacity:
        return None
    return (
        f"request needs {need} KV tokens (prompt {req.prompt_tokens} + output "
        f"reservation) but the largest instance holds {capacity}"
    )
