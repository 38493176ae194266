"""Phase leases: a commanded phase that lapses unless renewed.

A coordinator holds engines in ``prefill`` or ``decode``; an engine it
attached to outlives it. If the coordinator dies without handing the engine
back, the engine would stay in, say, ``decode`` for good, admitting nothing.
A ``PhaseCommand`` may carry ``lease_s``: unless another phase command arrives
within that many seconds, the engine falls back to its startup phase
(``ECOSERVE_PHASE``). A command without ``lease_s`` holds until the next one,
as before.

The deadline is checked on the engine thread whenever the engine loop looks
for work (``Controller.drain``), so an expired lease takes effect before the
next step. An engine asleep because its phase hides all its work would not
look, so a small alarm thread wakes it at the deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class PhaseLease:
    def __init__(self, wake: Callable[[], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.deadline: float | None = None
        self._alarm = _Alarm(wake)

    def grant(self, lease_s: float | None) -> None:
        """A phase was commanded, with this lease (None: no lease, holds until the next command)."""
        self.deadline = None if lease_s is None else self._clock() + lease_s
        self._alarm.set(lease_s)

    def expired(self) -> bool:
        """True once, when the lease ran out (then it is gone)."""
        if self.deadline is None or self._clock() < self.deadline:
            return False
        self.deadline = None
        return True

    def close(self) -> None:
        self._alarm.stop()


class _Alarm:
    """Calls ``wake`` once, ``after`` seconds from the last ``set``; one thread, started on first use."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._cond = threading.Condition()
        self._at: float | None = None
        self._stopped = False
        self._thread: threading.Thread | None = None

    def set(self, after: float | None) -> None:
        with self._cond:
            self._at = None if after is None else time.monotonic() + after
            if self._at is not None and self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ecoserve-phase-lease", daemon=True)
                self._thread.start()
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                if self._at is None:
                    self._cond.wait()
                    continue
                left = self._at - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._at = None
                self._wake()  # thread-safe: puts a WAKEUP on the engine's input queue
