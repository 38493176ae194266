"""ZeroMQ CURVE keys derived from one shared secret, for the plugin's sockets.

An engine's status (PUB) and command (ROUTER) sockets bind to loopback by
default, where only local processes reach them. Bound anywhere else
(``ECOSERVE_ZMQ_HOST``), they require ``ECOSERVE_ZMQ_SECRET``: the engine
refuses to start without it. With a secret set (on any host), both sides run
ZeroMQ CURVE (encrypted, authenticated): each derives the same two keypairs
from the secret, the engine's sockets are CURVE servers with the server
keypair, and a ZAP handler in the engine admits only the client public key.
So a peer without the secret cannot complete a handshake: it receives no
status and no command of its own reaches the engine.

The coordinator (``ecoserve.engine.status_stream``) and any command client
read the same variable; give every engine and the coordinator the same value,
e.g. ``python -c "import secrets; print(secrets.token_urlsafe(32))"``.

Needs only pyzmq (with libzmq built with CURVE, as the PyPI wheels are).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from typing import NamedTuple

import zmq
from zmq.utils import z85

SECRET_ENV = "ECOSERVE_ZMQ_SECRET"
HOST_ENV = "ECOSERVE_ZMQ_HOST"
MIN_SECRET_CHARS = 16  # the keys are a plain hash of it: a short one could be guessed offline


class ChannelSecurityError(RuntimeError):
    """The sockets would be reachable beyond this machine without a secret, or the secret is unusable."""


class CurveKeys(NamedTuple):
    """Z85-encoded CURVE keys (40 bytes each)."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes


def derive_keys(secret: str) -> CurveKeys:
    """The same keypairs from the same secret, on every machine."""
    if len(secret) < MIN_SECRET_CHARS:
        raise ChannelSecurityError(
            f"{SECRET_ENV} is too short ({len(secret)} characters; at least {MIN_SECRET_CHARS}). Make one with: "
            "python -c \"import secrets; print(secrets.token_urlsafe(32))\""
        )
    if not zmq.has("curve"):
        raise ChannelSecurityError(f"{SECRET_ENV} is set, but this libzmq was built without CURVE support")

    def keypair(role: bytes) -> tuple[bytes, bytes]:
        private = z85.encode(hashlib.sha256(b"ecoserve-curve-" + role + b"\0" + secret.encode()).digest())
        return zmq.curve_public(private), private

    server_public, server_secret = keypair(b"server")
    client_public, client_secret = keypair(b"client")
    return CurveKeys(server_public, server_secret, client_public, client_secret)


def secret_from_env() -> str | None:
    return os.environ.get(SECRET_ENV) or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a hostname or a wildcard ("*", "0.0.0.0" parses, "*" does not): not loopback
        return False


def server_keys(host: str, secret: str | None) -> CurveKeys | None:
    """The keys for sockets bound to ``host``: None on loopback without a
    secret; raises ChannelSecurityError beyond loopback without one."""
    if secret is None:
        if is_loopback(host):
            return None
        raise ChannelSecurityError(
            f"{HOST_ENV}={host} would expose the EcoServe status and command sockets beyond this machine "
            f"without authentication: set {SECRET_ENV} (at least {MIN_SECRET_CHARS} characters, the same value for "
            f"the coordinator; make one with: python -c \"import secrets; print(secrets.token_urlsafe(32))\"), "
            f"or bind to 127.0.0.1"
        )
    return derive_keys(secret)


def make_server(sock: zmq.Socket, keys: CurveKeys) -> None:
    """Before bind: ``sock`` accepts only CURVE peers (checked by the ZAP handler, ``start_authenticator``)."""
    sock.curve_secretkey = keys.server_secret
    sock.curve_publickey = keys.server_public
    sock.curve_server = True


def make_client(sock: zmq.Socket, keys: CurveKeys) -> None:
    """Before connect: ``sock`` talks CURVE to an engine holding the same secret."""
    sock.curve_secretkey = keys.client_secret
    sock.curve_publickey = keys.client_public
    sock.curve_serverkey = keys.server_public


def secure_client_from_env(sock: zmq.Socket) -> bool:
    """Make ``sock`` a CURVE client if ``ECOSERVE_ZMQ_SECRET`` is set; returns whether it did."""
    secret = secret_from_env()
    if secret is None:
        return False
    make_client(sock, derive_keys(secret))
    return True


class _ClientKeyOnly:
    def __init__(self, client_public: bytes) -> None:
        self._key = client_public

    def callback(self, domain: str, key: bytes) -> bool:
        return key == self._key


def start_authenticator(ctx: zmq.Context, keys: CurveKeys):
    """A ZAP handler on ``ctx`` (a thread) admitting only the derived client key; ``.stop()`` it before ``ctx.term()``."""
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(ctx, log=None)
    auth.start()
    auth.configure_curve_callback("*", credentials_provider=_ClientKeyOnly(keys.client_public))
    return auth
