"""The overall scheduler: macro instances side by side, behind one Router.

The paper leaves its policy open. Ours: offer a request to the macro
instances cyclically, starting with the one that took the previous request,
skipping any whose queue is non-empty (FIFO there); the first that can place it
takes it. If none can, it joins the shortest pending queue. A request whose
prompt some instances hold (their prefix caches) is first offered to those
holders, the longest prefix first (``MacroInstance.try_detour``): a detour
that moves no cursor, so when no holder takes it, it is routed exactly as it
would be with nothing cached. Whenever state
changes, each queue's head is offered to its own macro instance first and then
to the others with empty queues, so no request is stranded behind a busy
group while another has room.

Split and merge move instances (with their requests and windows) between
macro instances; nothing moves off an instance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ecoserve.policy.actions import Action, Constraint, Drained, Queued, Rejected
from ecoserve.policy.constraints import ConstraintChecker
from ecoserve.policy.instance import InstanceState
from ecoserve.policy.macro_instance import MacroInstance
from ecoserve.policy.phase import Phase
from ecoserve.policy.request import RequestState
from ecoserve.policy.router import Router
from ecoserve.policy.tracking import unfit_reason


class OverallScheduler(Router):
    initial_phase = Phase.DECODE  # decoding, no window open: windows are opened per request
    has_macros = True

    def __init__(self, checker: ConstraintChecker,
                 macro_factory: Callable[[ConstraintChecker, str], MacroInstance] | None = None) -> None:  # fmt: skip
        """``macro_factory(checker, name)``: the instance scheduler of each macro
        instance (default: Algorithm 1's ``MacroInstance``); its class's
        ``resting_phase`` is the phase instances start in."""
        self.checker = checker
        self._factory = macro_factory or (lambda c, name: MacroInstance(c, name=name))
        self.initial_phase = self._factory(checker, "-").resting_phase  # the instances' phase outside windows
        self.macros: list[MacroInstance] = []
        self._where: dict[str, MacroInstance] = {}  # instance id -> its macro instance
        self._live: dict[str, RequestState] = {}  # pending or routed, unfinished
        self._cursor = 0
        self._names = 0

    # -- layout ----------------------------------------------------------------------

    def _new_macro(self, at: int | None = None) -> MacroInstance:
        m = self._factory(self.checker, f"m{self._names}")
        self._names += 1
        self.macros.insert(len(self.macros) if at is None else at, m)
        return m

    def layout(self, *, include_draining: bool = False) -> list[list[str]]:
        """Instance ids per macro instance, in routing order."""
        return [[i.id for i in m.instances() if include_draining or not i.draining] for m in self.macros]

    def macro_of(self, instance_id: str) -> MacroInstance:
        return self._where[instance_id]

    def group_of(self, instance_id: str) -> str:
        return self._where[instance_id].name

    def group_names(self) -> list[str]:
        return [m.name for m in self.macros]

    def constraint_checker(self) -> ConstraintChecker:
        return self.checker

    def use_checker(self, checker: ConstraintChecker) -> None:
        self.checker = checker
        for m in self.macros:
            m.checker = checker

    def move_instance(self, instance_id: str, to: int, now: float) -> list[Action]:
        """Hand an instance (its handle and its requests' state) to another macro."""
        src = self._where[instance_id]
        inst = src.detach_instance(instance_id)
        dst = self.macros[to]
        self._where[instance_id] = dst
        return dst.add_instance(inst, now) + self._drop_empty_macros()

    def split(self, index: int, now: float) -> list[Action]:
        """Split a macro instance in two halves; the second half forms a new one
        placed right after it (12 -> 6 + 6 in the paper's run)."""
        if not 0 <= index < len(self.macros):
            raise IndexError(f"no macro instance {index}; there are {len(self.macros)}")
        ids = [i.id for i in self.macros[index].instances()]
        if len(ids) < 2:
            raise ValueError(f"macro instance {index} has {len(ids)} instance(s): nothing to split")
        self._new_macro(at=index + 1)
        actions: list[Action] = []
        for iid in ids[len(ids) // 2 :]:
            actions += self.move_instance(iid, index + 1, now)
        return actions

    def merge(self, into: int, other: int, now: float) -> list[Action]:
        """Move every instance and pending request of ``other`` into ``into``."""
        for i in (into, other):
            if not 0 <= i < len(self.macros):
                raise IndexError(f"no macro instance {i}; there are {len(self.macros)}")
        if into == other:
            raise ValueError("cannot merge a macro instance with itself")
        dst, src = self.macros[into], self.macros[other]
        for inst in list(src.instances()):
            src.detach_instance(inst.id)
            self._where[inst.id] = dst
            dst.add_instance(inst, now)
        while src.pending_len():
            dst.enqueue(src.pop_pending_head())
        self.macros.remove(src)
        self._cursor %= max(1, len(self.macros))
        return self._reoffer_all(now)

    def _drop_empty_macros(self) -> list[Action]:
        for m in [m for m in self.macros if not m.instances()]:
            if len(self.macros) == 1:
                break
            self.macros.remove(m)
            heir = self.macros[0]
            while m.pending_len():
                heir.enqueue(m.pop_pending_head())
        self._cursor %= max(1, len(self.macros))
        return []

    # -- Router ------------------------------------------------------------------------

    def add_instance(self, inst: InstanceState, now: float, macro: int | None = None) -> list[Action]:
        if inst.id in self._where:
            raise ValueError(f"instance {inst.id} is already routed to")
        if not self.macros:
            self._new_macro()
        if macro is None:
            macro = len(self.macros) - 1
        elif macro == len(self.macros):
            self._new_macro()
        if not 0 <= macro < len(self.macros):
            raise ValueError(f"no macro instance {macro}; there are {len(self.macros)}")
        m = self.macros[macro]
        self._where[inst.id] = m
        return self._track(m.add_instance(inst, now)) + self._reoffer_all(now)

    def remove_instance(self, instance_id: str, now: float) -> list[Action]:
        m = self._where[instance_id]
        return self._track(m.remove_instance(instance_id, now))

    def fail_instance(self, instance_id: str, now: float) -> list[Action]:
        m = self._where.pop(instance_id)
        actions = self._track(m.fail_instance(instance_id, now))
        for rid in [rid for rid, r in self._live.items() if r.instance_id == instance_id]:
            del self._live[rid]  # streams that died with it: the driver errors them
        self._drop_empty_macros()
        return actions + self._reoffer_all(now)

    def never_fits(self, req: RequestState) -> str | None:
        caps = [c for m in self.macros if (c := m.max_capacity()) is not None]
        return unfit_reason(self.checker.kv_need(req), req, max(caps) if caps else None)

    def submit(self, req: RequestState, now: float) -> list[Action]:
        if req.id in self._live:
            raise ValueError(f"request {req.id} was already submitted")
        why = self.never_fits(req)
        if why is not None:
            return [Rejected(req.id, why)]
        self._live[req.id] = req
        if not self.macros:
            self._new_macro()
        if req.blocks:
            for m, held in self._holding_macros(req):
                if not m.pending_len() and (got := m.try_detour(req, now, held)) is not None:
                    return got
        n = len(self.macros)
        first_failure: Constraint | None = None
        for k in range(n):
            idx = (self._cursor + k) % n
            m = self.macros[idx]
            if m.pending_len():
                first_failure = first_failure or Constraint.QUEUE
                continue
            actions, failed = m.try_route(req, now, affinity=False)
            if failed is None:
                self._cursor = idx
                return actions
            first_failure = first_failure or failed
        target = min(self.macros, key=lambda m: m.pending_len())
        target.enqueue(req)
        return [Queued(req.id, first_failure or Constraint.NO_INSTANCE)]

    def _holding_macros(self, req: RequestState) -> list[tuple[MacroInstance, dict[str, int]]]:
        """The macro instances where an accepting instance holds at least their
        ``affinity_min_tokens`` of ``req``'s prompt, the longest prefix first
        (ties: the cyclic order), each with its ``cached_by_instance(req)``.
        Where the indexes share a directory, one walk of the prompt names every
        holder and how much it holds, and that one answer is what the detours'
        checks use; otherwise each macro instance asks its own indexes."""
        for m in self.macros:
            if (directory := m.prefix_directory()) is not None:
                break
        if directory is None:
            by_macro = {id(m): (m, m.cached_by_instance(req)) for m in self.macros}
        else:
            by_macro = {}
            prompt, where = req.prompt_tokens, self._where
            for owner, n in directory.matches(req.blocks).items():
                m = where.get(owner)
                inst = m.instance(owner) if m is not None else None
                if inst is not None and inst.accepting and inst.prefix is not None:
                    by_macro.setdefault(id(m), (m, {}))[1][owner] = inst.prefix.tokens_of(n, prompt)
        if not by_macro:
            return []
        n, cur = len(self.macros), self._cursor
        ranked = [(-t, (k - cur) % n, m, held) for k, m in enumerate(self.macros)
                  if (entry := by_macro.get(id(m))) is not None and (held := entry[1])
                  and (t := max(held.values())) >= m.affinity_min_tokens]  # fmt: skip
        ranked.sort(key=lambda x: x[:2])
        return [(m, held) for _, _, m, held in ranked]

    def _macro_of_request(self, req: RequestState) -> MacroInstance | None:
        if req.instance_id is not None:
            return self._where.get(req.instance_id)
        return next((m for m in self.macros if m.request(req.id) is not None), None)

    def on_progress(self, progress: Iterable[tuple[str, int]], now: float) -> list[Action]:
        by_macro: dict[int, tuple[MacroInstance, list[tuple[str, int]], set[str]]] = {}
        for request_id, count in progress:
            req = self._live.get(request_id)
            if req is None or req.instance_id is None:
                continue
            m = self._where[req.instance_id]
            entry = by_macro.setdefault(id(m), (m, [], set()))
            entry[1].append((request_id, count))
            entry[2].add(req.instance_id)
        actions: list[Action] = []
        for m, items, touched in by_macro.values():
            actions += self._track(m.on_progress(items, now))
            for iid in touched:
                inst = m.instance(iid)
                if inst is not None:
                    actions += self._offer_to(inst, now)
        return actions

    def on_finish(self, request_id: str, now: float) -> list[Action]:
        req = self._live.pop(request_id, None)
        if req is None:
            return []
        m = self._macro_of_request(req)
        if m is None:
            return []
        actions = self._track(m.on_finish(request_id, now))
        inst = m.instance(req.instance_id) if req.instance_id else None
        return actions + (self._offer_to(inst, now) if inst else self._reoffer_all(now))

    def tick(self, now: float) -> list[Action]:
        return self._reoffer_all(now)

    def instances(self) -> list[InstanceState]:
        return [i for m in self.macros for i in m.instances()]

    def pending(self) -> list[RequestState]:
        return sorted((r for m in self.macros for r in m.pending()), key=lambda r: r.arrival)

    def has_pending(self) -> bool:
        return any(m.pending_len() for m in self.macros)

    def request(self, request_id: str) -> RequestState | None:
        return self._live.get(request_id)

    # -- internals ---------------------------------------------------------------------

    def _track(self, actions: list[Action]) -> list[Action]:
        """Keep the instance index in step with what the macro instances did."""
        for a in actions:
            if isinstance(a, Drained):
                self._where.pop(a.instance_id, None)
            elif isinstance(a, Rejected):
                self._live.pop(a.request_id, None)
        if any(isinstance(a, Drained) for a in actions):
            self._drop_empty_macros()
        return actions

    def _offer_to(self, inst: InstanceState, now: float) -> list[Action]:
        """One instance's state changed: its own macro instance re-offered its
        queue to it already; if that queue is empty, offer the other queues'
        heads to it, so no group's backlog waits while this one has room."""
        m = self._where.get(inst.id)
        if m is None or m.pending_len() or not self.has_pending():
            return []
        actions: list[Action] = []
        for o in self.macros:
            while o is not m and (head := o.pending_head()) is not None:
                got, failed = m.try_route(head, now, only=inst)
                if failed is not None:
                    break
                o.pop_pending_head()
                actions += got
        return actions

    def _reoffer_all(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for m in self.macros:
            actions += self._track(m.reoffer(now))
        for m in self.macros:  # heads that their own group cannot take yet
            while (head := m.pending_head()) is not None:
                placed = None
                for o in self.macros:
                    if o is m or o.pending_len():
                        continue
                    got, failed = o.try_route(head, now)
                    if failed is None:
                        placed = got
                        break
                if placed is None:
                    break
                m.pop_pending_head()
                actions += placed
        return actions
