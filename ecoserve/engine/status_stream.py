"""An engine's status pushes, received over ZeroMQ (SUB to the plugin's PUB).

The plugin publishes an ``EngineStatus`` after every engine step while busy
and after every phase change. Messages are msgspec JSON decoded strictly
(``ecoserve.protocol``): a malformed one is counted and skipped, never
unpickled, never fatal. PUB/SUB drops messages for slow subscribers by design;
every push is a full snapshot, so a lost one costs nothing but its step
records (the predictor calibrates on the rest). With ``ECOSERVE_ZMQ_SECRET``
set (it must be the engines' own), the connection is CURVE-authenticated
(``ecoserve.curve_auth``); with a wrong secret or none nothing arrives, and
the refused handshake is logged once as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import msgspec
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from ecoserve.curve_auth import SECRET_ENV, derive_keys, make_client, secret_from_env
from ecoserve.protocol import EngineStatus, decode_status

log = logging.getLogger("ecoserve.engine")
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


class StatusSubscriber:
    def __init__(self, address: str, on_status: Callable[[EngineStatus], Awaitable[None] | None], *,
                 secret: str | None = None) -> None:  # fmt: skip
        """``secret``: the engines' ``ECOSERVE_ZMQ_SECRET`` (default: this
        process's own); with one, the connection is CURVE-authenticated."""
        self.address = address
        secret = secret if secret is not None else secret_from_env()
        self._keys = derive_keys(secret) if secret else None
        self._on_status = on_status
        self._ctx = zmq.asyncio.Context.instance()
        self._sock: zmq.asyncio.Socket | None = None
        self.received = 0
        self.malformed = 0
        self.handshake_failures = 0

    async def run(self) -> None:
        """Receive until cancelled."""
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 10_000)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        if self._keys is not None:
            make_client(sock, self._keys)
        monitor = sock.get_monitor_socket(_HANDSHAKE_FAILED)
        watch = asyncio.create_task(self._watch_handshakes(monitor))
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
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watch
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)
            self._sock = None

    async def _watch_handshakes(self, monitor: zmq.asyncio.Socket) -> None:
        """Say why nothing arrives when the engine refuses us (a mismatched
        or missing secret fails silently otherwise: ZeroMQ just retries)."""
        while True:
            event = parse_monitor_message(await monitor.recv_multipart())
            self.handshake_failures += 1
            if self.handshake_failures == 1:
                log.error("status pushes from %s: the engine refused the connection (%s); it and this process "
                          "need the same %s (set here: %s)", self.address, zmq.Event(event["event"]).name,
                          SECRET_ENV, "yes" if self._keys is not None else "no")  # fmt: skip
