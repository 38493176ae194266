"""The contract between a routing policy and whoever drives it.

The live coordinator and the simulator both drive a ``Router``: they feed it
events with the current time and carry out the actions it returns. Nothing
here sleeps, awaits or does I/O, so the same object serves both worlds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

from ecoserve.policy.actions import Action
from ecoserve.policy.instance import InstanceState
from ecoserve.policy.request import RequestState


class Router(ABC):
    @abstractmethod
    def add_instance(self, inst: InstanceState, now: float) -> list[Action]:
        """A new instance is ready to take requests."""

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

    def group_of(self, instance_id: str) -> str:
        """The name of the macro instance an instance belongs to (one group,
        ``m0``, for routers without macro instances)."""
        return "m0"
