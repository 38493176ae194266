"""The plugin's ZeroMQ sockets beyond loopback: a shared secret, or no start.

These drive the real channel (``vllm_plugin.channel.ZmqChannel``, as the
engine's scheduler opens it) and the coordinator's real subscriber
(``ecoserve.engine.status_stream.StatusSubscriber``) over TCP, without an
engine: with ``ECOSERVE_ZMQ_SECRET`` a subscriber or command client holding
the secret gets through, one with a wrong secret or none gets nothing; bound
beyond loopback without a secret, the channel refuses to open; on loopback
without a secret it works as before. The real-engine counterpart (fuzzing
the control channel of a running engine) is in tests/plugin/test_control_fuzz.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import zmq

from ecoserve.curve_auth import ChannelSecurityError, derive_keys, is_loopback, make_client, server_keys
from ecoserve.engine.status_stream import StatusSubscriber
from ecoserve.protocol import EngineStatus, encode
from vllm_plugin.channel import ZmqChannel

SECRET = "correct horse battery staple 42"


def _status(seq: int) -> EngineStatus:
    return EngineStatus(engine_id="e0", seq=seq, time=time.time(), phase="decode", phase_since=0.0,
                        activity="idle", activity_since=0.0, step=0, num_waiting=0, num_prefilling=0,
                        num_decoding=0, kv_blocks_free=1, kv_blocks_total=1, block_size=16, max_num_seqs=1,
                        max_num_batched_tokens=1)  # fmt: skip


@pytest.fixture
def channel_env(monkeypatch):
    """Opens channels with the given environment; closes them afterwards. The
    variables are removed again before the test's clients are made, so the
    clients use only the secrets they are given."""
    opened: list[ZmqChannel] = []

    def open_channel(**env: str) -> ZmqChannel:
        for name in ("ECOSERVE_ZMQ_HOST", "ECOSERVE_ZMQ_SECRET", "ECOSERVE_ZMQ_ADVERTISE_HOST"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        try:
            ch = ZmqChannel(wake=lambda: None)
        finally:
            for name in env:
                monkeypatch.delenv(name)
        opened.append(ch)
        return ch

    yield open_channel
    for ch in opened:
        ch.close()


async def _subscribers_receive(ch: ZmqChannel, secrets: dict[str, str | None], seconds: float = 1.5) -> dict:
    """Run one StatusSubscriber per secret (None: plain, no CURVE) while the
    channel publishes; return how many statuses each received."""
    subs = {name: StatusSubscriber(ch.status_address, lambda st: None, secret=secret or "")
            for name, secret in secrets.items()}  # fmt: skip
    tasks = [asyncio.create_task(s.run()) for s in subs.values()]
    deadline = time.monotonic() + seconds
    seq = 0
    while time.monotonic() < deadline:
        seq += 1
        ch.publish(encode(_status(seq)))
        await asyncio.sleep(0.01)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {name: s.received for name, s in subs.items()}


def _command_round_trip(ch: ZmqChannel, keys, timeout_s: float = 1.5) -> bytes | None:
    """Send a command from a DEALER (a CURVE client with ``keys``, or plain) and
    serve the channel as the engine loop does; the reply, or None."""
    ctx = zmq.Context.instance()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        make_client(dealer, keys)
    dealer.connect(ch.command_address)
    try:
        dealer.send(b'{"type": "get_status"}')
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for envelope, raw in ch.receive():
                ch.reply(envelope, b"ack " + raw)
            if dealer.poll(10):
                return dealer.recv()
        return None
    finally:
        dealer.close()


def test_loopback_without_secret_works_as_before(channel_env):
    ch = channel_env()
    assert not ch.secured and ch.status_address.startswith("tcp://127.0.0.1:")
    got = asyncio.run(_subscribers_receive(ch, {"plain": None}))
    assert got["plain"] > 0
    assert _command_round_trip(ch, None) == b'ack {"type": "get_status"}'


@pytest.mark.parametrize("host", ["0.0.0.0", "*", "::", "10.1.2.3", "example.org"])
def test_beyond_loopback_without_secret_refuses_to_open(channel_env, host):
    with pytest.raises(ChannelSecurityError, match=r"set ECOSERVE_ZMQ_SECRET .* or bind to 127\.0\.0\.1"):
        channel_env(ECOSERVE_ZMQ_HOST=host)


def test_a_short_secret_is_refused(channel_env):
    with pytest.raises(ChannelSecurityError, match="too short"):
        channel_env(ECOSERVE_ZMQ_HOST="0.0.0.0", ECOSERVE_ZMQ_SECRET="hunter2")


def test_loopback_detection():
    assert all(is_loopback(h) for h in ["127.0.0.1", "127.5.0.1", "::1", "[::1]", "localhost"])
    assert not any(is_loopback(h) for h in ["0.0.0.0", "*", "::", "", "10.0.0.1", "myhost"])
    assert server_keys("127.0.0.1", None) is None
    a, b = derive_keys(SECRET), derive_keys(SECRET)
    assert a == b and a.server_public != a.client_public and derive_keys(SECRET + "x") != a
    assert all(len(k) == 40 for k in a)


def test_with_the_secret_only_its_holders_get_status_and_commands(channel_env, caplog):
    ch = channel_env(ECOSERVE_ZMQ_HOST="0.0.0.0", ECOSERVE_ZMQ_SECRET=SECRET, ECOSERVE_ZMQ_ADVERTISE_HOST="127.0.0.1")
    assert ch.secured
    got = asyncio.run(_subscribers_receive(ch, {"right": SECRET, "wrong": "not the secret, but long enough",
                                                "none": None}))  # fmt: skip
    assert got["right"] > 0 and got["wrong"] == 0 and got["none"] == 0, got
    refused = [r.getMessage() for r in caplog.records if "the engine refused the connection" in r.getMessage()]
    assert len(refused) == 2 and any("set here: no" in m for m in refused), refused  # wrong and none, once each
    assert _command_round_trip(ch, derive_keys(SECRET)) == b'ack {"type": "get_status"}'
    assert _command_round_trip(ch, derive_keys("not the secret, but long enough")) is None
    assert _command_round_trip(ch, None) is None
    # Knowing the engine's public key is not enough: the ZAP handler admits only the secret's client key.
    public, private = zmq.curve_keypair()
    stranger = derive_keys(SECRET)._replace(client_public=public, client_secret=private)
    assert _command_round_trip(ch, stranger) is None
    assert _command_round_trip(ch, derive_keys(SECRET)) is not None  # refused peers changed nothing


def test_a_secret_on_loopback_also_turns_curve_on(channel_env):
    ch = channel_env(ECOSERVE_ZMQ_SECRET=SECRET)
    assert ch.secured
    got = asyncio.run(_subscribers_receive(ch, {"right": SECRET, "none": None}, seconds=1.0))
    assert got["right"] > 0 and got["none"] == 0, got


def test_subscriber_takes_the_secret_from_the_environment(channel_env, monkeypatch):
    ch = channel_env(ECOSERVE_ZMQ_HOST="0.0.0.0", ECOSERVE_ZMQ_SECRET=SECRET, ECOSERVE_ZMQ_ADVERTISE_HOST="127.0.0.1")
    monkeypatch.setenv("ECOSERVE_ZMQ_SECRET", SECRET)  # as the coordinator's process has it
    received = []

    async def run() -> None:
        sub = StatusSubscriber(ch.status_address, received.append)
        task = asyncio.create_task(sub.run())
        for seq in range(100):
            ch.publish(encode(_status(seq)))
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    assert received and all(st.engine_id == "e0" for st in received)
