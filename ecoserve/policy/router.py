"""The contract between a routing policy and whoever drives it.

The live coordinator and the simulator both drive a ``Router``: they feed it
events with the current time and carry out the actions it returns. Nothing
here sleeps, awaits or does I/O, so the same object serves both worlds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

from ecoserve.policy.actions import Action
from ecoserve.policy.constraints import ConstraintChecker
from ecoserve.policy.instance import InstanceState
from ecoserve.policy.phase import Phase
from ecoserve.policy.request import RequestState


class Router(ABC):
    # The phase an engine must be in before it takes its first request under
    # this router: EcoServe's instances start decoding with no window open;
    # the baselines run stock vLLM scheduling.
    initial_phase: Phase = Phase.MIXED

    @abstractmethod
    def add_instance(self, inst: InstanceState, now: float, macro: int | None = None) -> list[Action]:
        """A new instance is ready to take requests. ``macro``: the index of
        the macro instance it joins (``len(layout())`` opens a new one); None:
        where the router adds by default. Routers without macro instances
        accept only None or 0."""

    @abstractmethod
    def remove_instance(self, instance_id: str, now: float) -> list[Action]:
        """Stop routing to it and let it drain; ``Drained`` comes once it is empty."""

    @abstractmethod
    def fail_instance(self, instance_id: str, now: float) -> list[Action]:
        """It died: forget it. Its requests without a first token go back to the
        head of the pending queue (they lose nothing); requests already
        streaming are gone with it, and the driver must end them with an error."""

    @abstractmethod
    def submit(self, req: RequestState, now: float) -> list[Action]:
        """A new request: ``Routed``, ``Queued`` or ``Rejected`` (plus phase commands)."""

    @abstractmethod
    def on_progress(self, progress: Iterable[tuple[str, int]], now: float) -> list[Action]:
        """Output tokens arrived, as (request id, count) pairs (e.g. one engine
        step's worth); a request's first report is its first token."""

    def on_tokens(self, request_id: str, count: int, now: float) -> list[Action]:
        """``count`` output tokens arrived for one request."""
        return self.on_progress(((request_id, count),), now)

    @abstractmethod
    def on_finish(self, request_id: str, now: float) -> list[Action]:
        """Finished, or aborted at any stage (pending requests included)."""

    @abstractmethod
    def tick(self, now: float) -> list[Action]:
        """Time passed with no event; re-offer what is pending. Events re-offer
        the queue only to the instance they changed; as time alone shortens an
        open window's remaining stall, drivers call this now and then (the live
        coordinator every few ms while anything is pending)."""

    @abstractmethod
    def instances(self) -> list[InstanceState]:
        """Every instance known, in routing order (draining ones included)."""

    @abstractmethod
    def pending(self) -> list[RequestState]:
        """Requests waiting to be routed, oldest first."""

    @abstractmethod
    def request(self, request_id: str) -> RequestState | None:
        """A routed or pending request that has not finished."""

    def has_pending(self) -> bool:
        """Whether any request waits to be routed."""
        return bool(self.pending())

    def layout(self, *, include_draining: bool = False) -> list[list[str]]:
        """Instance ids per macro instance, in routing order (one group for
        routers without macro instances)."""
        return [[i.id for i in self.instances() if include_draining or not i.draining]]

    def group_names(self) -> list[str]:
        """The macro instances' names, in the order of ``layout()``."""
        return ["m0"]

    def group_of(self, instance_id: str) -> str:
        """The name of the macro instance an instance belongs to (one group,
        ``m0``, for routers without macro instances)."""
        return "m0"

    def group_index_of(self, instance_id: str) -> int:
        """The index in ``layout()`` of the macro instance an instance belongs to."""
        return self.group_names().index(self.group_of(instance_id))

    def constraint_checker(self) -> ConstraintChecker | None:
        """The constraint check this router routes by (None: it checks nothing)."""
        return None

    def use_checker(self, checker: ConstraintChecker) -> None:
        """Route by another constraint check from now on (what-if experiments)."""
        raise ValueError(f"{type(self).__name__} routes by no constraint check")

    # Macro-instance restructuring: only routers with macro instances can.
    has_macros: bool = False

    def split(self, index: int, now: float) -> list[Action]:
        """Split macro instance ``index`` in two halves (handles move, requests stay)."""
        raise ValueError(f"{type(self).__name__} has no macro instances to split")

    def merge(self, into: int, other: int, now: float) -> list[Action]:
        """Move every instance and pending request of macro ``other`` into ``into``."""
        raise ValueError(f"{type(self).__name__} has no macro instances to merge")
