"""An engine's status pushes, received over ZeroMQ (SUB to the plugin's PUB).

The plugin publishes an ``EngineStatus`` after every engine step while busy
and after every phase change. Messages are msgspec JSON decoded strictly
(``ecoserve.protocol``): a malformed one is counted and skipped, never
unpickled, never fatal. PUB/SUB drops messages for slow subscribers by design;
every push is a full snapshot, so a lost one costs nothing but its step
records (the predictor calibrates on the rest).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import msgspec
import zmq
import zmq.asyncio

from ecoserve.protocol import EngineStatus, decode_status

log = logging.getLogger("ecoserve.engine")


class StatusSubscriber:
    def __init__(self, address: str, on_status: Callable[[EngineStatus], Awaitable[None] | None]) -> None:
        self.address = address
        self._on_status = on_status
        self._ctx = zmq.asyncio.Context.instance()
        self._sock: zmq.asyncio.Socket | None = None
        self.received = 0
        self.malformed = 0

    async def run(self) -> None:
        """Receive until cancelled."""
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 10_000)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self.address)
        self._sock = sock
        try:
            while True:
                data = await sock.recv()
                try:
                    status = decode_status(data)
                except (msgspec.DecodeError, msgspec.ValidationError) as e:
                    self.malformed += 1
                    if self.malformed <= 3:
                        log.warning("malformed status push from %s dropped: %s", self.address, e)
                    continue
                self.received += 1
                result = self._on_status(status)
                if result is not None:
                    await result
        finally:
            sock.close(0)
            self._sock = None
