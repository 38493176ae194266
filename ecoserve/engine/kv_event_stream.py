"""An engine's KV-cache events, received over ZeroMQ (SUB to vLLM's PUB).

Rule: every message is decoded by ``kv_events.decode_message`` (msgpack into
msgspec Structs, never unpickled); a malformed one is counted and skipped, and
so is one the caller fails to apply (logged, and reported as a lost batch). The
publisher numbers its batches: a jump in the sequence means batches were lost
(PUB/SUB drops them for a slow subscriber, and any sent before we connected
are never seen), which the caller hears as ``on_gap`` so it can stop trusting
what it built from them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec
import zmq
import zmq.asyncio

from ecoserve.engine.kv_events import KVEventBatch, decode_message

log = logging.getLogger("ecoserve.engine")


class KVEventSubscriber:
    def __init__(self, address: str, on_batch: Callable[[KVEventBatch], None], *,
                 on_gap: Callable[[int], None] | None = None) -> None:  # fmt: skip
        """``on_gap(lost)``: that many batches were published and not received."""
        self.address = address
        self._on_batch = on_batch
        self._on_gap = on_gap
        self._ctx = zmq.asyncio.Context.instance()
        self.received = 0
        self.malformed = 0
        self.failed = 0  # batches received whose on_batch raised (counted as lost too)
        self.lost = 0
        self._last_seq: int | None = None

    async def run(self) -> None:
        """Receive until cancelled."""
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self.address)
        try:
            while True:
                self.handle(await sock.recv_multipart())
        finally:
            sock.close(0)

    def handle(self, frames: list[bytes]) -> None:
        """One message: decoded and passed on, or counted as malformed."""
        try:
            seq, batch = decode_message(frames)
        except (ValueError, msgspec.DecodeError, msgspec.ValidationError) as e:
            self.malformed += 1
            if self.malformed <= 3:
                log.warning("malformed KV-event message from %s dropped: %s", self.address, e)
            return
        if self._last_seq is not None and seq > self._last_seq + 1:
            self.lost += seq - self._last_seq - 1
            if self._on_gap is not None:
                self._on_gap(seq - self._last_seq - 1)
        self._last_seq = seq if self._last_seq is None else max(seq, self._last_seq)
        self.received += 1
        try:
            self._on_batch(batch)
        except Exception:  # a batch we could not apply must not stop the ones after it
            self.failed += 1
            if self.failed <= 3:
                log.exception("KV-event batch %d from %s could not be applied", seq, self.address)
            if self._on_gap is not None:
                self._on_gap(1)  # what was built from the events is an estimate from here on
