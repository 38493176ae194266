"""ZeroMQ sockets of one engine: a PUB socket pushing status, a ROUTER socket
taking commands.

Threading (schedule() runs on the EngineCore main thread; zmq sockets are not
thread-safe; the main thread holds the GIL for most of a step):
- The main thread owns the PUB socket and a DEALER ``worker`` socket, and polls
  the worker without blocking once per step (``receive``): a busy engine sees a
  command at its next step boundary, with no Python thread in between.
- ``zmq.proxy`` (C code, no GIL) moves commands and replies between the public
  ROUTER and the worker, and copies each message to a capture socket.
- A small waker thread blocks on that capture socket and calls ``wake`` (puts a
  WAKEUP on the EngineCore input queue), so an idle engine loop, blocked on its
  queue, re-checks for work; it needs the GIL only when the engine is idle.
  The proxy copies to the capture socket before forwarding, so a woken engine
  may look a few microseconds early: message counts tell it to wait for it.

Security: loopback by default; beyond it (``ECOSERVE_ZMQ_HOST``) only with
``ECOSERVE_ZMQ_SECRET``, which turns on CURVE for both sockets and a ZAP
handler thread admitting only holders of the secret (``ecoserve.curve_auth``).
Commands over 64 KiB drop their connection (``MAXMSGSIZE``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

import zmq

from ecoserve.curve_auth import HOST_ENV, make_server, secret_from_env, server_keys, start_authenticator

logger = logging.getLogger("vllm.ecoserve")  # under vLLM's handlers and format

MAX_COMMAND_BYTES = 64 * 1024  # commands are tiny; refuse junk early
_WILDCARD_HOSTS = {"0.0.0.0", "*", "::", ""}


def _bind(sock: zmq.Socket, host: str, port: int) -> int:
    if port:
        sock.bind(f"tcp://{host}:{port}")
        return port
    return sock.bind_to_random_port(f"tcp://{host}")


def _env_int(name: str) -> int:
    return int(os.environ.get(name, "0") or 0)


class ZmqChannel:
    def __init__(self, wake: Callable[[], None]) -> None:
        host = os.environ.get(HOST_ENV, "127.0.0.1")
        # Beyond loopback only with a shared secret (CURVE); refuses to start otherwise.
        keys = server_keys(host, secret_from_env())
        advertised = os.environ.get("ECOSERVE_ZMQ_ADVERTISE_HOST") or (
            socket.gethostname() if host in _WILDCARD_HOSTS else host
        )
        self._ctx = ctx = zmq.Context()
        self._auth = start_authenticator(ctx, keys) if keys is not None else None
        self.secured = keys is not None
        tag = f"ecoserve-{os.getpid()}-{id(self)}"

        self._pub = ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, 10_000)
        frontend = ctx.socket(zmq.ROUTER)
        frontend.setsockopt(zmq.MAXMSGSIZE, MAX_COMMAND_BYTES)  # a larger message drops its connection
        if keys is not None:
            make_server(self._pub, keys)
            make_server(frontend, keys)
        self.status_address = f"tcp://{advertised}:{_bind(self._pub, host, _env_int('ECOSERVE_ZMQ_STATUS_PORT'))}"
        self.command_address = f"tcp://{advertised}:{_bind(frontend, host, _env_int('ECOSERVE_ZMQ_COMMAND_PORT'))}"
        backend = ctx.socket(zmq.DEALER)
        backend.bind(f"inproc://{tag}-backend")
        capture = ctx.socket(zmq.PUSH)
        capture.bind(f"inproc://{tag}-capture")
        self._worker = ctx.socket(zmq.DEALER)
        self._worker.connect(f"inproc://{tag}-backend")
        taps = ctx.socket(zmq.PULL)
        taps.connect(f"inproc://{tag}-capture")
        for sock in (self._pub, frontend, backend, capture, self._worker, taps):
            sock.setsockopt(zmq.LINGER, 0)

        # Messages through the proxy (commands and replies): counted by the
        # waker; the main thread counts what it received and sent.
        self._captured = 0
        self._accounted = 0
        threading.Thread(target=_run_proxy, args=(frontend, backend, capture), name="ecoserve-zmq-proxy", daemon=True).start()
        threading.Thread(target=self._run_waker, args=(taps, wake), name="ecoserve-zmq-waker", daemon=True).start()

    # ---- main thread only ----------------------------------------------------
    def receive(self) -> list[tuple[list[bytes], bytes]]:
        """Commands waiting now, as (envelope, payload). Does not block, except
        for a command the proxy has announced but not yet handed over."""
        got = self._take()
        if self._captured > self._accounted and self._worker.poll(10):
            got += self._take()
        return got

    def _take(self) -> list[tuple[list[bytes], bytes]]:
        got = []
        while self._worker.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            frames = self._worker.recv_multipart(zmq.NOBLOCK)
            self._accounted += 1
            if len(frames) >= 2:  # identity [+ empty delimiter from REQ] + payload
                got.append((frames[:-1], frames[-1]))
        return got

    def reply(self, envelope: list[bytes], data: bytes) -> None:
        self._accounted += 1  # its copy reaches the capture socket too
        try:
            self._worker.send_multipart([*envelope, data], zmq.NOBLOCK)
        except zmq.Again:  # cannot happen with an unbounded inproc pipe; never stall
            self._accounted -= 1

    # ---- waker thread --------------------------------------------------------
    def _run_waker(self, taps: zmq.Socket, wake: Callable[[], None]) -> None:
        try:
            while True:
                taps.recv_multipart()
                self._captured += 1
                wake()  # also for replies: a spurious wake-up costs nothing
        except zmq.ContextTerminated:
            pass
        except Exception:
            logger.exception("EcoServe command waker stopped")
        finally:
            taps.close()

    def publish(self, data: bytes) -> None:
        try:
            self._pub.send(data, zmq.NOBLOCK)
        except zmq.Again:  # a slow subscriber must never stall the engine
            pass

    def close(self) -> None:
        self._pub.close()
        self._worker.close()
        # term() waits for the proxy and waker threads to close their sockets
        # (they do on ETERM); do not hold up the engine's shutdown for it.
        threading.Thread(target=self._term, name="ecoserve-zmq-term", daemon=True).start()

    def _term(self) -> None:
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()


def _run_proxy(frontend: zmq.Socket, backend: zmq.Socket, capture: zmq.Socket) -> None:
    try:
        zmq.proxy(frontend, backend, capture)
    except zmq.ContextTerminated:
        pass
    except Exception:
        logger.exception("EcoServe command proxy stopped")
    finally:
        for sock in (frontend, backend, capture):
            sock.close()

