"""The plugin inside real vLLM API servers (CPU build, tiny generated model).

Two servers per test session, started side by side, each pinned to one core:
`eco` runs the EcoServe scheduler, `stock` runs vLLM's own. Both have
VLLM_PLUGINS=ecoserve, so `stock` also checks the endpoint plugin's error path,
and it has an API key, which the plugin's routes must honour. Tests leave `eco`
idle in `temporal` phase for the next test.
"""

from __future__ import annotations

import itertools
import json
import statistics
import threading
import time

import httpx
import pytest

zmq = pytest.importorskip("zmq")

from ecoserve.protocol import EngineStatus, ErrorReply, GetStatus, PhaseCommand, decode_reply, decode_status, encode  # noqa: E402
from vllm_plugin import SCHEDULER_CLS  # noqa: E402

pytestmark = pytest.mark.engine

MODEL_NAME = "tiny"
START_TIMEOUT_S = 240


class Server:
    """One of the two engines (started by ``start_engine``), with a client for its routes."""

    def __init__(self, engine, api_key: str = "") -> None:
        self.engine = engine
        self.name = engine.name
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.port = engine.port
        self.url = engine.url
        self.http = httpx.Client(base_url=self.url, timeout=60, headers=self.headers)

    def wait_ready(self) -> None:
        self.engine.wait_ready(START_TIMEOUT_S)

    def log_tail(self, lines: int = 60) -> str:
        return self.engine.log_tail(lines)

    def stop(self) -> None:
        self.http.close()
        self.engine.stop()

    # ---- EcoServe control over HTTP -----------------------------------------
    def status(self) -> EngineStatus:
        r = self.http.get("/ecoserve/status")
        assert r.status_code == 200, r.text
        return decode_status(r.content)

    def set_phase(self, phase: str) -> EngineStatus:
        r = self.http.post("/ecoserve/phase", json={"phase": phase})
        assert r.status_code == 200, r.text
        return decode_status(r.content)


@pytest.fixture(scope="session")
def _servers(tiny_model, tmp_path_factory, start_engine):
    log_dir = tmp_path_factory.mktemp("vllm-logs")

    # float32: the output-identity tests compare greedy tokens across different batchings
    # (chunked here, whatever vLLM batched there). In bf16 a near-tie between two logits of
    # the random-weight model flips with the batching: CI on an AMX host saw one token of
    # 192 differ. float32 leaves such ties ~65,000x rarer; nothing else here needs bf16.
    def start(name: str, core: int, *extra_args: str):
        return start_engine(
            tiny_model, "--served-model-name", MODEL_NAME, "--host", "127.0.0.1",
            "--enforce-eager", "--max-model-len", "4096", "--dtype", "float32", *extra_args,
            name=name, core=core, env={"ECOSERVE_ENGINE_ID": name}, log_dir=log_dir,
        )  # fmt: skip

    servers = {
        "eco": Server(start("eco", 0, "--scheduler-cls", SCHEDULER_CLS)),
        # With an API key: the plugin's routes must honour it like vLLM's own.
        "stock": Server(start("stock", 1, "--api-key", "sesame"), api_key="sesame"),
    }
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session")
def _eco_ready(_servers) -> Server:
    _servers["eco"].wait_ready()
    return _servers["eco"]


@pytest.fixture(scope="session")
def stock(_servers) -> Server:
    _servers["stock"].wait_ready()
    return _servers["stock"]


@pytest.fixture
def eco(_eco_ready, request):
    """The EcoServe server; afterwards back to temporal and drained. On a test
    failure the server logs are printed (shown in the failure report)."""
    failed_before = request.session.testsfailed
    yield _eco_ready
    try:
        _eco_ready.set_phase("temporal")
        wait_for(lambda: _idle(_eco_ready.status()), 60, "eco drained")
    finally:
        if request.session.testsfailed > failed_before:
            print(f"----- {_eco_ready.name} server log (tail) -----\n{_eco_ready.log_tail()}")


def _idle(st: EngineStatus) -> bool:
    return st.num_waiting == st.num_prefilling == st.num_decoding == 0


def wait_for(cond, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := cond():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Stream(threading.Thread):
    """One streaming completion; collects the generated token ids as they come."""

    def __init__(self, server: Server, prompt: str, max_tokens: int, **params) -> None:
        super().__init__(daemon=True)
        self.body = {
            "model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True,
            "temperature": 0.0, "stream": True, "return_token_ids": True, **params,
        }  # fmt: skip
        self.url = server.url
        self.headers = server.headers
        self.tokens: list[int] = []
        self.first_token_at: float | None = None  # time.time() the first token arrived
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.url + "/v1/completions", json=self.body, headers=self.headers, timeout=120) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        for choice in json.loads(line[6:])["choices"]:
                            self.tokens.extend(choice.get("token_ids") or [])
                        if self.tokens and self.first_token_at is None:
                            self.first_token_at = time.time()
        except BaseException as e:  # reported by result()
            self.error = e

    def result(self, timeout: float = 120) -> list[int]:
        self.join(timeout)
        assert not self.is_alive(), "stream did not finish"
        assert self.error is None, self.error
        return self.tokens


def prompt(i: int) -> str:
    # Distinct and short (< one 128-token KV block), so KV counts are exact.
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    return " ".join(words[(i + k) % len(words)] for k in range(5 + 3 * (i % 7))) + f" {i}"


class Zmq:
    """Coordinator-side ZeroMQ view of one engine (REQ for commands, SUB for pushes)."""

    def __init__(self, status: EngineStatus) -> None:
        self.ctx = zmq.Context()
        self.req = self.ctx.socket(zmq.REQ)
        self.req.connect(status.addresses.command)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.RCVHWM, 0)  # keep every push until read
        self.sub.connect(status.addresses.status)
        time.sleep(0.2)  # SUB connects asynchronously

    def call(self, payload: bytes, timeout_ms: int = 5000):
        self.req.send(payload)
        assert self.req.poll(timeout_ms), "no reply from the engine"
        return decode_reply(self.req.recv())

    def pushes(self) -> list[EngineStatus]:
        out = []
        while self.sub.poll(0):
            out.append(decode_status(self.sub.recv()))
        return out

    def close(self) -> None:
        self.req.close(0)
        self.sub.close(0)
        self.ctx.term()


@pytest.fixture
def eco_zmq(eco):
    z = Zmq(eco.status())
    yield z
    z.close()


# ---------------------------------------------------------------------------


def test_idle_status_is_exact(eco, eco_zmq):
    st = eco.status()
    assert (st.engine_id, st.phase, st.activity) == ("eco", "temporal", "idle")
    assert _idle(st) and st.kv_blocks_free == st.kv_blocks_total > 0 and st.block_size > 0
    assert st.vllm_version.startswith(("0.32.", "0.33."))
    assert st.addresses.status.startswith("tcp://127.0.0.1:") and st.addresses.command.startswith("tcp://127.0.0.1:")
    # An idle engine takes no steps (it does not spin) and both paths agree.
    time.sleep(0.3)
    again = eco_zmq.call(encode(GetStatus()))
    assert again.step == st.step and again.seq > st.seq
    assert (again.num_waiting, again.kv_blocks_free) == (0, st.kv_blocks_total)


def test_decode_phase_holds_and_prefill_phase_admits(eco):
    total = eco.status().kv_blocks_total
    held = eco.set_phase("decode")
    streams = [Stream(eco, prompt(i), max_tokens=12) for i in range(3)]
    st = wait_for(lambda: (s := eco.status()).num_waiting == 3 and s, 10, "3 waiting")
    time.sleep(0.3)
    st = eco.status()  # exact while holding back: nothing admitted, no step taken
    assert (st.num_waiting, st.num_prefilling, st.num_decoding) == (3, 0, 0)
    assert st.step == held.step and st.kv_blocks_free == total
    assert all(s.tokens == [] for s in streams)

    eco.set_phase("prefill")
    wait_for(lambda: all(len(s.tokens) == 1 for s in streams), 10, "first tokens")
    time.sleep(0.3)  # prefill phase with only decodes left: paused, and no spinning
    st = eco.status()
    assert (st.num_waiting, st.num_decoding, st.activity) == (0, 3, "idle")
    assert st.kv_blocks_free == total - 3  # one block each
    assert [len(s.tokens) for s in streams] == [1, 1, 1]
    time.sleep(0.2)
    assert eco.status().step == st.step

    late = Stream(eco, prompt(3), max_tokens=12)  # admitted and prefilled alone
    wait_for(lambda: len(late.tokens) == 1, 10, "late first token")
    time.sleep(0.2)
    assert [len(s.tokens) for s in streams] == [1, 1, 1]
    new_steps = [r for r in eco.status().steps if r.step > held.step]
    assert new_steps and all(r.kind == "prefill" and r.decode_batch == 0 for r in new_steps)

    eco.set_phase("decode")
    assert all(len(s.result()) == 12 for s in [*streams, late])


def test_phase_commands_take_effect_fast(eco, eco_zmq):
    # Idle: the command wakes the sleeping engine loop (limit: 10 ms).
    zmq_rtt, http_rtt = [], []
    for phase in ["decode", "prefill", "temporal"] * 10:
        t = time.perf_counter()
        assert eco_zmq.call(encode(PhaseCommand(phase=phase))).phase == phase
        zmq_rtt.append(time.perf_counter() - t)
        t = time.perf_counter()
        assert eco.set_phase(phase).phase == phase
        http_rtt.append(time.perf_counter() - t)
    print(f"idle command round trip: zmq median {statistics.median(zmq_rtt) * 1e3:.2f} ms, "
          f"http median {statistics.median(http_rtt) * 1e3:.2f} ms")  # fmt: skip
    assert statistics.median(zmq_rtt) < 0.010 and statistics.median(http_rtt) < 0.010

    # Busy: applied at a step boundary, and then no step runs (the phase
    # leaves nothing to run). All over ZeroMQ, asked rather than read from the
    # pushes: the API server and this thread, short of CPU and GIL while four
    # streams run, lag a 1.3 ms-a-step engine by up to ~100 ms (seen in CI).
    # Deterministic set-up: the four are prefilled in a prefill phase (which
    # does not decode them), then decode together, 3000 tokens each (>= 4 s),
    # so all four are decoding whenever the command lands.
    LONG = 3000

    def status() -> EngineStatus:
        return eco_zmq.call(encode(GetStatus()))

    eco.set_phase("decode")  # queue them first
    streams = [Stream(eco, prompt(i), max_tokens=LONG) for i in range(4)]
    wait_for(lambda: eco.status().num_waiting == 4, 30, "4 queued")
    eco_zmq.call(encode(PhaseCommand(phase="prefill")))
    wait_for(lambda: (st := status()).num_decoding == 4 and st.num_waiting == 0 and st.activity == "idle", 60,
             "4 prefilled, held")  # fmt: skip
    start = eco_zmq.call(encode(PhaseCommand(phase="decode"))).step
    seen = wait_for(lambda: (st := status()).step >= start + 3 and st, 30, "decoding").step
    t = time.perf_counter()
    ack = eco_zmq.call(encode(PhaseCommand(phase="prefill")))
    busy_rtt = time.perf_counter() - t
    print(f"busy command round trip: {busy_rtt * 1e3:.2f} ms, {ack.step - seen} step(s) after the status call")
    assert ack.num_decoding == 4, "the four must still be decoding (3000 tokens each)"
    time.sleep(0.3)
    st = status()
    assert st.step == ack.step and st.num_decoding == 4 and st.activity == "idle"
    eco_zmq.call(encode(PhaseCommand(phase="temporal")))
    assert all(len(s.result()) == LONG for s in streams)


def _steps(pushes: list[EngineStatus], after: int) -> list:
    records = {r.step: r for st in pushes for r in st.steps if r.step > after}
    return [records[k] for k in sorted(records)]


def test_temporal_never_mixes_prefill_and_decode(eco, eco_zmq):
    # More prompt tokens queued than one step's budget, released together:
    # prefills remain while the first admitted ones could decode. Queued first
    # so the test does not hang on when the API server hands requests over
    # (hundreds of ms apart on this machine).
    budget = eco.status().max_num_batched_tokens
    n = budget // 400 + 2
    start, pushes = _released_together(eco, eco_zmq, "temporal", n=n, prompt_len=400)
    records = _steps(pushes, start)
    assert [r.step for r in records] == list(range(start + 1, start + 1 + len(records)))  # every step pushed
    assert "mixed" not in [r.kind for r in records]
    assert all(r.decode_batch == 0 for r in records if r.prefill_tokens)
    assert sum(1 for r in records if r.prefill_tokens) >= 2  # the prefills spanned several steps
    assert all(r.duration_s > 0 for r in records) and max(r.decode_batch for r in records) >= 2

    # Control: stock scheduling does mix, so the check above can bite. Queued
    # first, then released together, so it does not hang on when the API
    # server hands requests over: with more prompt tokens waiting than one
    # step's budget, stock vLLM prefills what fits, then decodes those while
    # it prefills the rest.
    budget = eco.status().max_num_batched_tokens
    start, pushes = _released_together(eco, eco_zmq, "mixed", n=budget // 400 + 2, prompt_len=400)
    eco.set_phase("temporal")
    kinds = [r.kind for r in _steps(pushes, start)]
    assert "mixed" in kinds, f"stock scheduling never mixed: {[(k, len(list(g))) for k, g in itertools.groupby(kinds)]}"


_fresh = itertools.count()


def _released_together(server: Server, z: Zmq, phase: str, n: int, prompt_len: int) -> tuple[int, list[EngineStatus]]:
    """``n`` prompts of ``prompt_len`` tokens queued in `decode` phase, then
    released into `phase` at once; returns the step before and the pushes.
    Every call sends prompts never sent before: a prefix-cache hit would leave
    almost nothing to prefill."""
    server.set_phase("decode")
    salt = next(_fresh)
    streams = [
        Stream(server, [4 + (salt * 389 + i * 7 + k * 13) % 1000 for k in range(prompt_len)], max_tokens=8)
        for i in range(n)
    ]
    wait_for(lambda: server.status().num_waiting == n, 60, f"{n} queued")
    start = server.status().step
    pushes = z.pushes()
    server.set_phase(phase)
    for s in streams:
        assert len(s.result()) == 8
    time.sleep(0.1)
    return start, pushes + z.pushes()


def _command(server: Server, **body) -> EngineStatus:
    r = server.http.post("/ecoserve/phase", json=body)
    assert r.status_code == 200, r.text
    return decode_status(r.content)


def test_chunked_phase_runs_every_decode_plus_at_most_the_budget(eco, eco_zmq):
    # 4 prompts of 400 tokens released together into chunked with a 64-token budget: every step
    # takes at most 64 prompt tokens, and the first ones to finish their prompt decode beside the
    # later prompts' chunks.
    _command(eco, phase="decode", prompt_budget=64)  # the budget is kept for the chunked phase
    start, pushes = _released_together(eco, eco_zmq, "chunked", n=4, prompt_len=400)
    records = _steps(pushes, start)
    assert records and max(r.prefill_tokens for r in records) <= 64
    assert sum(r.prefill_tokens for r in records) >= 4 * 400 - 4 * 128  # (less what a cached block saved)
    assert any(r.kind == "mixed" for r in records), [r.kind for r in records]
    _command(eco, phase="chunked")
    assert eco.status().prompt_budget == 64

    # Control: stock scheduling takes whole prompts within its 2048-token budget, so the cap can bite.
    start, pushes = _released_together(eco, eco_zmq, "mixed", n=4, prompt_len=400)
    assert max(r.prefill_tokens for r in _steps(pushes, start)) > 64


def test_chunked_phase_with_a_step_budget_counts_the_decodes(eco, eco_zmq):
    # --policy ecoserve-trickle's command: 48 tokens a step, decodes included (Sarathi's budget).
    # Once prompts finish and decode beside the later prompts' chunks, each step's prompt tokens
    # are 48 less its decodes.
    _command(eco, phase="decode", step_budget=48)
    start, pushes = _released_together(eco, eco_zmq, "chunked", n=4, prompt_len=300)
    records = _steps(pushes, start)
    assert any(r.kind == "mixed" for r in records), [r.kind for r in records]
    assert all(r.prefill_tokens + r.decode_batch <= 48 for r in records), records
    assert eco.status().prompt_budget is not None
    _command(eco, phase="decode", tpot_s=100.0)  # the rule again, for the tests that follow


def test_chunked_phase_with_a_tpot_slo_sizes_chunks_from_the_decoders_slack(eco, eco_zmq):
    # More prompt tokens than one step's limit, released together: the first step (nothing decodes)
    # takes the limit, the rest is chunked beside the decodes of the prompts already done.
    n = eco.status().max_num_batched_tokens // 400 + 2
    # A 1 ms TPOT: every decoder is always late, so each step with decodes gets the floor
    # (ECOSERVE_CHUNK_FLOOR, 64, less one token per decode).
    _command(eco, phase="decode", tpot_s=0.001)
    start, pushes = _released_together(eco, eco_zmq, "chunked", n=n, prompt_len=400)
    tight = _steps(pushes, start)
    assert any(r.kind == "mixed" for r in tight)
    assert all(r.prefill_tokens <= 64 - r.decode_batch for r in tight if r.decode_batch), tight
    # A 100 s TPOT: once the decoders have banked a token's slack, it pays for the rest at once.
    _command(eco, phase="decode", tpot_s=100.0)
    start, pushes = _released_together(eco, eco_zmq, "chunked", n=n, prompt_len=400)
    loose = _steps(pushes, start)
    assert max(r.prefill_tokens for r in loose if r.decode_batch) > 64, loose


def _long_then_short(server: Server, ttft_s: float) -> tuple[float, float, float]:
    """Beside a decoder that keeps every step at the floor (a 1 ms TPOT: always late),
    a 3,000-token prompt queued 1.2 s before a 10-token one, both released into
    `chunked` with this TTFT SLO. Returns (release time, the long prompt's first
    token time, the short one's)."""
    salt = next(_fresh)
    decoder = Stream(server, prompt(salt % 7), max_tokens=3000)  # outlives both prompts (asserted below)
    wait_for(lambda: decoder.tokens, 60, "the decoder's first token")
    _command(server, phase="decode", tpot_s=0.001, ttft_s=ttft_s)
    long = Stream(server, [4 + (salt * 389 + k * 13) % 1000 for k in range(3000)], max_tokens=1)
    wait_for(lambda: server.status().num_waiting == 1, 60, "the long prompt queued")
    time.sleep(1.2)
    short = Stream(server, [4 + (salt * 71 + k * 7) % 1000 for k in range(10)], max_tokens=1)
    wait_for(lambda: server.status().num_waiting == 2, 60, "both queued")
    released = time.time()
    server.set_phase("chunked")
    long.result(), short.result()
    assert len(decoder.tokens) < 3000, "the decoder finished before the prompts: nothing kept them to the floor"
    decoder.result()
    return released, long.first_token_at, short.first_token_at


def test_a_lost_prompt_yields_to_one_that_can_still_meet_its_ttft(eco):
    # TTFT 1 s: the long prompt is past due when released (lost); the short one can still make it, so (a TTFT
    # SLO turns ECOSERVE_LOST_YIELD on by default) the long one sits out from its second chunk on.
    released, long_at, short_at = _long_then_short(eco, ttft_s=1.0)
    assert short_at < long_at - 0.75 * (long_at - released), (released, long_at, short_at)
    # Control, a 1 h TTFT: nobody is lost, and the short prompt waits for the long one's chunks, in vLLM's order.
    released, long_at, short_at = _long_then_short(eco, ttft_s=3600.0)
    assert short_at > long_at - 0.25 * (long_at - released), (released, long_at, short_at)


def test_chunked_outputs_are_identical_to_the_stock_scheduler(eco, stock):
    prompts = [prompt(i) for i in range(8)]  # 6 to 26 tokens: a 16-token budget chunks most of them
    _command(eco, phase="decode", prompt_budget=16)
    eco_streams = [Stream(eco, p, max_tokens=24) for p in prompts]
    wait_for(lambda: eco.status().num_waiting == 8, 30, "8 queued")
    eco.set_phase("chunked")
    chunked = [s.result() for s in eco_streams]
    assert all(len(t) == 24 for t in chunked)
    assert chunked == [s.result() for s in [Stream(stock, p, max_tokens=24) for p in prompts]]


def test_outputs_identical_to_stock_scheduler(eco, stock):
    def run(server: Server, **params) -> list[list[int]]:
        if server is eco:  # queue them all, then prefill together and decode as a batch
            eco.set_phase("decode")
        streams = [Stream(server, prompt(i), max_tokens=24, **params) for i in range(8)]
        if server is eco:
            wait_for(lambda: eco.status().num_waiting == 8, 30, "8 queued")
            eco.set_phase("temporal")
        return [s.result() for s in streams]

    greedy = run(eco)
    assert all(len(t) == 24 for t in greedy)
    assert greedy == run(stock)
    seeded = {"temperature": 1.0, "seed": 1234}
    assert run(eco, **seeded) == run(stock, **seeded)


def test_bad_commands_are_rejected_and_engine_keeps_serving(eco, eco_zmq):
    for body in [b"{", b'{"phase": "sideways"}', b'{"phase": "decode", "extra": 1}', b"[]"]:
        r = eco.http.post("/ecoserve/phase", content=body)
        assert r.status_code == 400 and isinstance(decode_reply(r.content), ErrorReply), r.text
    for body in [b"", b"garbage", b'{"type": "reboot"}', b'{"type": "set_phase", "phase": 3}']:
        r = eco.http.post("/ecoserve/command", content=body)  # rejected by the engine itself
        assert r.status_code == 400 and isinstance(decode_reply(r.content), ErrorReply), r.text
        assert isinstance(eco_zmq.call(body), ErrorReply)
    # An oversized message is dropped by the socket; the channel stays usable.
    dealer = eco_zmq.ctx.socket(zmq.DEALER)
    dealer.connect(eco.status().addresses.command)
    dealer.send(b"x" * 200_000)
    dealer.close(0)
    assert eco_zmq.call(encode(GetStatus())).phase == "temporal"
    assert len(Stream(eco, prompt(0), max_tokens=5).result()) == 5


def test_stock_scheduler_engine_explains_missing_plugin_scheduler(stock):
    assert httpx.get(stock.url + "/ecoserve/status").status_code == 401  # no API key
    assert httpx.post(stock.url + "/ecoserve/phase", json={"phase": "decode"}, headers={"Authorization": "Bearer x"}).status_code == 401
    r = stock.http.get("/ecoserve/status")
    assert r.status_code == 503
    assert "--scheduler-cls" in decode_reply(r.content).error
