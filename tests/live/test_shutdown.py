"""Graceful shutdown of `ecoserve serve`: SIGTERM drains, a second signal stops at once.

The main test starts `ecoserve serve` with one real vLLM CPU engine (tiny
model) as a user would, puts long streaming requests in flight, and sends
SIGTERM: the streams must still get every token, a new request during the
grace must get 503 (and /health 503), and the process must exit 0 with the
engine's whole process group gone. The grace-expiry and second-signal cases
only need the shutdown plumbing, so they run against a stand-in engine
(ecoserve.testing.fake_engine) that streams slowly.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest

from ecoserve.engine.launcher import group_alive

START_TIMEOUT_S = 300
# With --max-model-len 8192: ~20 s of decoding for three on this 2-core machine. 1500 tokens
# (3-4 s) ended before the drain could be probed, on a fast CI machine and here alike.
LONG_TOKENS = 7000


class Stream(threading.Thread):
    """One streaming completion through the front door; counts tokens and notes an error event."""

    def __init__(self, url: str, max_tokens: int) -> None:
        super().__init__(daemon=True)
        self.url, self.max_tokens = url, max_tokens
        self.started = threading.Event()
        self.usage: int | None = None
        self.pieces = 0
        self.error_event: dict | None = None
        self.done_marker = False
        self.failure: BaseException | None = None
        self.start()

    def run(self) -> None:
        body = {"prompt": "once upon a time", "max_tokens": self.max_tokens, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        try:
            with httpx.stream("POST", self.url + "/v1/completions", json=body, timeout=300) as r:
                assert r.status_code == 200, r.read()
                for line in r.iter_lines():
                    if line == "data: [DONE]":
                        self.done_marker = True
                    elif line.startswith("data: {"):
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            self.error_event = chunk["error"]
                            continue
                        self.pieces += len(chunk["choices"])
                        self.started.set()
                        if chunk.get("usage") and not chunk["choices"]:
                            self.usage = chunk["usage"]["completion_tokens"]
        except BaseException as e:  # reported by the test
            self.failure = e
        finally:
            self.started.set()


def _refused_while_draining(url: str, streams: list[Stream]) -> tuple[httpx.Response, httpx.Response, bool]:
    """Wait until the drain has begun (the signal is handled asynchronously;
    /health answers at once, busy engine or not), then send a new request;
    returns the refusal, /health, and whether a stream was still running when
    both were seen.

    A request sent before the drain began would be accepted and, on one engine
    in its decode phase, wait for the streams to end: the refusal would then
    come too late to prove anything. /health first avoids that race."""
    deadline = time.time() + 10
    while time.time() < deadline:
        health = httpx.get(url + "/health", timeout=10)
        if health.status_code != 200:
            r = httpx.post(url + "/v1/completions", json={"prompt": "late", "max_tokens": 4}, timeout=10)
            return r, health, any(s.is_alive() for s in streams)
        time.sleep(0.02)
    raise AssertionError("/health still answered 200 10 s after SIGTERM")


@pytest.mark.engine
def test_sigterm_lets_streams_finish_refuses_new_requests_and_stops_engines(tiny_model, tmp_path, start_serve):
    serve = start_serve(["--model", str(tiny_model), "--engines", "1", "--shutdown-grace", "120", "--",
                         "--max-model-len", "8192", "--enforce-eager", "--dtype", "bfloat16"], tmp_path)  # fmt: skip
    pids: list[int] = []
    try:
        serve.wait_ready(START_TIMEOUT_S)
        pids = serve.engine_pids()
        assert pids and all(group_alive(p) for p in pids)
        streams = [Stream(serve.url, LONG_TOKENS) for _ in range(3)]
        for s in streams:
            assert s.started.wait(120) and s.failure is None, s.failure
        t0 = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        refused, health, streaming = _refused_while_draining(serve.url, streams)
        assert streaming, "the streams ended before the refusal was seen: the test proves nothing; raise LONG_TOKENS"
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["type"] == "ServiceUnavailableError"
        assert "shutting down" in refused.json()["error"]["message"]
        assert health.status_code == 503 and "shutting down" in health.json()["error"]["message"]
        for s in streams:
            s.join(240)
            assert not s.is_alive() and s.failure is None, s.failure
            assert s.error_event is None and s.done_marker, s.error_event
            assert s.usage == LONG_TOKENS and s.pieces > 0  # every token, after SIGTERM (a chunk may carry several)
        assert serve.proc.wait(timeout=120) == 0, serve.output()
        took = time.monotonic() - t0
        print(f"\nSIGTERM with 3 streams of {LONG_TOKENS} tokens in flight: exited 0 after {took:.1f}s")
        assert not [p for p in pids if group_alive(p)]  # the engine's whole process group is gone
        out = serve.output()
        assert "draining: new requests get 503" in out and "ecoserve: stopped" in out
    finally:
        serve.kill(pids)  # never leave an engine behind, even if the test failed


@pytest.fixture
def fake_engine(tmp_path, start_fake_engine):
    with start_fake_engine(tmp_path, token_interval=0.05, publish=False) as fake:
        yield fake.url


def test_grace_runs_out_streams_end_with_an_error_event(fake_engine, tmp_path, start_serve):
    serve = start_serve(["--engine-url", fake_engine, "--shutdown-grace", "1"], tmp_path)
    try:
        serve.wait_ready(60)
        stream = Stream(serve.url, 2000)  # 100 s at 50 ms a token
        assert stream.started.wait(30) and stream.failure is None, stream.failure
        t0 = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(timeout=30) == 0, serve.output()
        took = time.monotonic() - t0
        stream.join(10)
        assert not stream.is_alive()
        # Cut by the shutdown, and told so: an error event, never a silent truncation.
        assert stream.usage is None and stream.error_event is not None, (stream.failure, serve.output())
        assert 1 <= took < 10, took
        assert "1 request(s) still in flight are aborted" in serve.output()
    finally:
        serve.kill()


def test_second_signal_stops_at_once(fake_engine, tmp_path, start_serve):
    serve = start_serve(["--engine-url", fake_engine, "--shutdown-grace", "600"], tmp_path)
    try:
        serve.wait_ready(60)
        stream = Stream(serve.url, 2000)
        assert stream.started.wait(30) and stream.failure is None, stream.failure
        serve.proc.send_signal(signal.SIGTERM)
        refused, health, _ = _refused_while_draining(serve.url, [stream])
        assert refused.status_code == 503 and health.status_code == 503
        t0 = time.monotonic()
        serve.proc.send_signal(signal.SIGINT)
        assert serve.proc.wait(timeout=30) == 0, serve.output()
        assert time.monotonic() - t0 < 10  # not the 600 s grace
        stream.join(10)
        assert not stream.is_alive() and stream.usage is None
        assert "stopping now" in serve.output()
    finally:
        serve.kill()
