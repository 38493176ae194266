"""Fuzzing the control channel of a real engine (vLLM CPU, tiny model, EcoServe plugin).

One engine, started as an operator would expose it: ZeroMQ sockets bound to
0.0.0.0 with ``ECOSERVE_ZMQ_SECRET`` (CURVE), and ``--api-key``. Then:

- HTTP ``/ecoserve/*`` without the API key: 401, on every route;
- a few hundred generated bad commands (garbage bytes, any JSON, unknown
  fields, wrong types, unknown types, invalid phases) over ZeroMQ (a CURVE
  client holding the secret) and over HTTP (``/ecoserve/command`` and
  ``/ecoserve/phase``): every one answered with an ``ErrorReply`` (HTTP 400),
  with valid commands in between still answered with a fresh status;
- oversized commands: over ZeroMQ the socket drops the connection (no reply;
  the client sees the disconnect), over HTTP 413 without reading the body;
- a subscriber with the secret receives status pushes, one without receives none;
- afterwards the engine still serves a completion and obeys phase commands;
- a phase lease (``lease_s``) left to lapse frees a request held by ``decode``.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter

import httpx
import msgspec
import pytest

from vllm_plugin import SCHEDULER_CLS

zmq = pytest.importorskip("zmq")

from ecoserve.curve_auth import derive_keys, make_client  # noqa: E402
from ecoserve.protocol import (  # noqa: E402
    EngineStatus,
    ErrorReply,
    GetStatus,
    PhaseCommand,
    decode_command,
    decode_reply,
    decode_status,
    encode,
)

pytestmark = pytest.mark.engine

SECRET = "fuzz-test-secret-0123456789abcdef"
API_KEY = "fuzz-key"
START_TIMEOUT_S = 300
PHASES = ("temporal", "prefill", "decode", "mixed")


@pytest.fixture(scope="module")
def engine(tiny_model, tmp_path_factory, start_engine):
    env = {"ECOSERVE_ZMQ_HOST": "0.0.0.0", "ECOSERVE_ZMQ_ADVERTISE_HOST": "127.0.0.1", "ECOSERVE_ZMQ_SECRET": SECRET}
    with start_engine(tiny_model, "--served-model-name", "tiny", "--host", "127.0.0.1", "--enforce-eager",
                      "--max-model-len", "512", "--dtype", "bfloat16", "--api-key", API_KEY,
                      "--scheduler-cls", SCHEDULER_CLS,
                      env=env, log_dir=tmp_path_factory.mktemp("fuzz")) as server:  # fmt: skip
        server.wait_ready(START_TIMEOUT_S)
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as http:
            yield http


# ---- generated bad commands (seeded: the same every run) --------------------------------


def _junk(rng: random.Random, depth: int = 0):
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 7, 2**63, -(2**70), 10**30])
    if kind == 3:
        return rng.choice([0.5, -1e308, 1e308])
    if kind == 4:
        return "".join(rng.choice("abcdé中\u0000\"\\{}[]") for _ in range(rng.randrange(12)))
    if kind in (5, 6):
        return [_junk(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(_junk(rng, 2)): _junk(rng, depth + 1) for _ in range(rng.randrange(4))}


def _not_a_phase(rng: random.Random):
    value = _junk(rng)
    return value if value not in PHASES else "sideways"


def bad_commands(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """(category, payload): none of them a valid Command."""
    rng = random.Random(seed)
    makers = {
        "garbage-bytes": lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))),
        "any-json": lambda: json.dumps(_junk(rng)).encode(),
        "unknown-field": lambda: json.dumps({"type": rng.choice(["set_phase", "get_status"]), "phase": "decode",
                                             "x" + str(rng.randrange(99)): _junk(rng)}).encode(),  # fmt: skip
        "wrong-type": lambda: json.dumps({"type": "set_phase", "phase": _not_a_phase(rng)}).encode(),
        "unknown-type": lambda: json.dumps({"type": rng.choice(["reboot", "exec", "", "SET_PHASE", 1, None]),
                                            "phase": "decode"}).encode(),  # fmt: skip
        "missing-type": lambda: json.dumps({"phase": rng.choice(PHASES)}).encode(),
        "truncated": lambda: encode(PhaseCommand(phase=rng.choice(PHASES)))[: rng.randrange(1, 30)],
    }
    names = list(makers)
    out = [(names[i % len(names)], makers[names[i % len(names)]]()) for i in range(n)]
    for _, payload in out:  # what the generator promises
        with pytest.raises(msgspec.DecodeError):  # ValidationError is one too
            decode_command(payload)
    return out


# ---- the tests ---------------------------------------------------------------------------


def test_control_routes_need_the_api_key(engine):
    url = str(engine.base_url).rstrip("/")
    for method, path, body in [("GET", "/ecoserve/status", None), ("POST", "/ecoserve/phase", {"phase": "decode"}),
                               ("POST", "/ecoserve/command", {"type": "set_phase", "phase": "decode"})]:  # fmt: skip
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
            r = httpx.request(method, url + path, json=body, headers=headers, timeout=10)
            assert r.status_code == 401, (path, headers, r.text)
    assert decode_status(engine.get("/ecoserve/status").content).phase == "temporal"  # nothing changed


class CurveDealer:
    """A command client holding the secret, watching its own connection."""

    def __init__(self, address: str, keys) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        make_client(self.sock, keys)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.sock.connect(address)

    def call(self, payload: bytes, timeout_ms: int = 5000):
        self.sock.send(payload)
        if not self.sock.poll(timeout_ms):
            return None
        return decode_reply(self.sock.recv())

    def events(self, wait_ms: int = 0) -> Counter:
        from zmq.utils.monitor import recv_monitor_message

        got: Counter = Counter()
        while self.monitor.poll(wait_ms):
            got[recv_monitor_message(self.monitor)["event"]] += 1
            wait_ms = 0
        return got

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)
        self.ctx.term()


def test_fuzzed_commands_are_rejected_and_the_engine_keeps_serving(engine):
    status = decode_status(engine.get("/ecoserve/status").content)
    assert status.addresses is not None and status.addresses.command.startswith("tcp://127.0.0.1:")
    dealer = CurveDealer(status.addresses.command, derive_keys(SECRET))
    counts: Counter = Counter()
    try:
        assert isinstance(dealer.call(encode(GetStatus())), EngineStatus)
        for i, (category, payload) in enumerate(bad_commands(350)):
            reply = dealer.call(payload)
            assert isinstance(reply, ErrorReply), (category, payload[:80], reply)
            counts["zmq " + category] += 1
            r = engine.post("/ecoserve/command", content=payload)
            assert r.status_code == 400 and isinstance(decode_reply(r.content), ErrorReply), (category, r.text)
            counts["http-command " + category] += 1
            if category != "missing-type":  # {"phase": ...} is what /ecoserve/phase takes
                r = engine.post("/ecoserve/phase", content=payload)
                assert r.status_code == 400 and isinstance(decode_reply(r.content), ErrorReply), (category, r.text)
                counts["http-phase " + category] += 1
            if i % 25 == 0:  # valid commands in between are still obeyed
                phase = PHASES[(i // 25) % len(PHASES)]
                assert dealer.call(encode(PhaseCommand(phase=phase))).phase == phase
                assert decode_status(engine.post("/ecoserve/phase", json={"phase": "temporal"}).content).phase == "temporal"

        # Oversized: over ZeroMQ the socket drops the connection, no reply; over HTTP 413.
        dealer.events(200)
        for size in (64 * 1024 + 1, 1 << 20):
            assert dealer.call(b"{" + b" " * (size - 2) + b"}", timeout_ms=1500) is None
            assert dealer.events(2000)[zmq.EVENT_DISCONNECTED] >= 1
            counts["zmq oversized (dropped)"] += 1
            for path in ("/ecoserve/command", "/ecoserve/phase"):
                r = engine.post(path, content=b"x" * size)
                assert r.status_code == 413 and isinstance(decode_reply(r.content), ErrorReply), r.text
                counts["http oversized (413)"] += 1
            # ZeroMQ reconnects by itself: the same client is served again.
            deadline = time.time() + 10
            while not isinstance(reply := dealer.call(encode(GetStatus()), timeout_ms=1000), EngineStatus):
                assert time.time() < deadline, "the command client was not served again after the drop"
        print(f"\nrejected: {sum(counts.values())} bad commands; {dict(sorted(counts.items()))}")
    finally:
        dealer.close()

    # Still serving: phase commands work and a completion completes.
    assert decode_status(engine.post("/ecoserve/phase", json={"phase": "temporal"}).content).phase == "temporal"
    r = engine.post("/v1/completions", json={"model": "tiny", "prompt": "hello", "max_tokens": 5, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5, r.text


def test_status_pushes_reach_only_holders_of_the_secret(engine):
    address = decode_status(engine.get("/ecoserve/status").content).addresses.status
    ctx = zmq.Context()
    subs = {}
    for name, keys in (("right", derive_keys(SECRET)), ("wrong", derive_keys("x" * 32)), ("none", None)):
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        if keys is not None:
            make_client(sock, keys)
        sock.connect(address)
        subs[name] = sock
    try:
        time.sleep(0.5)  # connect and handshake
        got: Counter = Counter()
        deadline = time.time() + 3
        flip = 0
        while time.time() < deadline:  # each phase change pushes a status
            flip += 1
            engine.post("/ecoserve/phase", json={"phase": "decode" if flip % 2 else "temporal"})
            for name, sock in subs.items():
                while sock.poll(0):
                    decode_status(sock.recv())
                    got[name] += 1
            time.sleep(0.05)
        assert got["right"] > 0 and got["wrong"] == 0 and got["none"] == 0, got
    finally:
        engine.post("/ecoserve/phase", json={"phase": "temporal"})
        for sock in subs.values():
            sock.close(0)
        ctx.term()


def test_a_lapsed_phase_lease_frees_an_engine_held_in_decode(engine):
    # As if the coordinator held the engine in decode with a lease, then died.
    st = decode_status(engine.post("/ecoserve/phase", json={"phase": "decode", "lease_s": 1.5}).content)
    assert st.phase == "decode"
    t0 = time.monotonic()
    body = {"model": "tiny", "prompt": "held", "max_tokens": 4, "ignore_eos": True}
    r = engine.post("/v1/completions", json=body)  # waits: decode admits nothing, until the lease lapses
    took = time.monotonic() - t0
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4, r.text
    assert took >= 1.2, took
    assert decode_status(engine.get("/ecoserve/status").content).phase == "temporal"  # the startup phase
    print(f"\nheld in decode by a 1.5 s lease: served after {took:.2f}s")
