"""The EcoServe scheduler driven step by step, without a model.

Real vLLM objects throughout (VllmConfig from the tiny model, vLLM's Scheduler
and AsyncScheduler, KV cache manager, Request); only the model runner is left
out: each step's sampled token is supplied here. This is the one place the
async variant runs at all (the CPU platform forces async scheduling off), and
it makes phase rules checkable to the exact step in milliseconds.
"""

from __future__ import annotations

import itertools
import time

import pytest

pytest.importorskip("vllm")

import torch  # noqa: E402
import zmq  # noqa: E402
from vllm.engine.arg_utils import EngineArgs  # noqa: E402
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.v1.core.sched.async_scheduler import AsyncScheduler  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec  # noqa: E402
from vllm.v1.outputs import ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402

from ecoserve.protocol import EngineStatus, ErrorReply, GetStatus, PhaseCommand, decode_reply, encode  # noqa: E402
from vllm_plugin.scheduler import EcoServeAsyncScheduler, EcoServeScheduler  # noqa: E402

BLOCK = 16
_ids = itertools.count()


@pytest.fixture(scope="module")
def vllm_config_factory(tiny_model):
    def make(async_scheduling: bool, num_blocks: int, batched_tokens: int):
        config = EngineArgs(
            model=str(tiny_model),
            max_model_len=512,
            max_num_batched_tokens=batched_tokens,
            enable_prefix_caching=False,
            enforce_eager=True,
            dtype="bfloat16",
        ).create_engine_config()
        config.scheduler_config.async_scheduling = async_scheduling
        config.cache_config.num_gpu_blocks = num_blocks
        return config

    return make


@pytest.fixture
def make_scheduler(vllm_config_factory, monkeypatch):
    made = []

    def make(async_scheduling=False, num_blocks=200, batched_tokens=512, phase="temporal"):
        monkeypatch.setenv("ECOSERVE_PHASE", phase)
        config = vllm_config_factory(async_scheduling, num_blocks, batched_tokens)
        spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=2, head_size=64, dtype=torch.bfloat16)
        kv = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[], kv_cache_groups=[KVCacheGroupSpec(["l0"], spec)])
        sched = EcoServeScheduler(
            vllm_config=config,
            kv_cache_config=kv,
            structured_output_manager=StructuredOutputManager(config),
            block_size=BLOCK,
        )
        made.append(sched)
        return sched

    yield make
    for sched in made:
        sched.shutdown()


def add(sched, prompt_len: int, max_tokens: int = 8) -> str:
    req_id = f"r{next(_ids)}"
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    sched.add_request(Request(req_id, list(range(1, prompt_len + 1)), params, None))
    return req_id


def step(sched):
    """One engine step as EngineCore does it, with a fixed sampled token."""
    assert sched.has_requests()
    out = sched.schedule()
    ids = list(out.num_scheduled_tokens)
    sampled = [[] if sched.requests[r].is_prefill_chunk else [7] for r in ids]
    runner = ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)}, sampled_token_ids=sampled)
    sched.update_from_output(out, runner)
    return sched.eco_steps.recent[-1]


def outputs(sched, req_id) -> int:
    return sched.requests[req_id].num_output_tokens


both_variants = pytest.mark.parametrize("async_sched", [False, True], ids=["sync", "async"])


def test_variant_is_chosen_by_async_scheduling(make_scheduler):
    sync, asyn = make_scheduler(False), make_scheduler(True)
    assert type(sync) is EcoServeScheduler
    assert type(asyn) is EcoServeAsyncScheduler and isinstance(asyn, AsyncScheduler)


@both_variants
def test_temporal_prefills_first_and_never_mixes(make_scheduler, async_sched):
    s = make_scheduler(async_sched)
    a, b = add(s, 20), add(s, 30)
    assert step(s).kind == "prefill"
    assert step(s).kind == "decode"
    assert (outputs(s, a), outputs(s, b)) == (2, 2)
    c = add(s, 40)
    rec = step(s)  # the arrival is prefilled alone; running decodes sit out
    assert (rec.kind, rec.prefill_tokens, rec.decode_batch) == ("prefill", 40, 0)
    assert (outputs(s, a), outputs(s, b), outputs(s, c)) == (2, 2, 1)
    rec = step(s)
    assert (rec.kind, rec.decode_batch) == ("decode", 3)
    kinds = {step(s).kind for _ in range(6)}
    assert kinds == {"decode"}
    assert not s.has_requests() or step(s).kind in {"decode", "empty"}


@both_variants
def test_explicit_phases(make_scheduler, async_sched):
    s = make_scheduler(async_sched, phase="decode")
    a, b = add(s, 20), add(s, 25)
    # decode phase, nothing running: the waiting work is hidden, the loop sleeps.
    assert s.get_num_unfinished_requests() == 0 and not s.has_requests()
    st = s.eco_status(recent=True)
    assert (st.num_waiting, st.num_prefilling, st.num_decoding) == (2, 0, 0)
    assert st.kv_blocks_free == st.kv_blocks_total

    s.eco_set_phase("prefill")
    rec = step(s)
    assert (rec.kind, rec.prefill_reqs) == ("prefill", 2)
    # Prefill phase with only decodes left: hidden again, no empty steps.
    assert not s.has_requests()
    st = s.eco_status(recent=True)
    assert (st.num_waiting, st.num_decoding, st.activity) == (0, 2, "idle")
    assert st.kv_blocks_free == st.kv_blocks_total - 4  # 2 blocks of 16 each

    c = add(s, 10)
    rec = step(s)
    assert (rec.kind, rec.prefill_reqs, rec.decode_batch) == ("prefill", 1, 0)
    assert (outputs(s, a), outputs(s, b), outputs(s, c)) == (1, 1, 1)

    s.eco_set_phase("decode")
    d = add(s, 10)  # arrives during decode: waits
    for _ in range(7):
        rec = step(s)
        assert rec.kind in ("decode", "empty") and rec.prefill_tokens == 0
    assert outputs(s, d) == 0 and s.eco_status(recent=True).num_waiting == 1
    while s.has_requests():
        assert step(s).prefill_tokens == 0
    assert s.get_num_unfinished_requests() == 0  # d is hidden in decode phase
    s.eco_set_phase("temporal")
    assert step(s).kind == "prefill"


@both_variants
def test_mixed_is_stock(make_scheduler, async_sched):
    s = make_scheduler(async_sched, phase="mixed")
    add(s, 20)
    step(s)
    add(s, 30)
    rec = step(s)
    assert (rec.kind, rec.prefill_tokens, rec.decode_batch) == ("mixed", 30, 1)


@both_variants
def test_chunked_prefill_stays_separate(make_scheduler, async_sched):
    s = make_scheduler(async_sched, batched_tokens=64)
    a = add(s, 20, max_tokens=20)
    step(s)
    step(s)
    long = add(s, 150)  # three chunks of <= 64 tokens
    kinds = [step(s) for _ in range(3)]
    assert [(r.kind, r.decode_batch) for r in kinds] == [("prefill", 0)] * 3
    assert outputs(s, a) == 2 and outputs(s, long) == 1
    # In decode phase a partial prefill sits out until the next prefill phase.
    b = add(s, 150)
    step(s)  # temporal: first chunk of b
    s.eco_set_phase("decode")
    st = s.eco_status(recent=True)
    assert (st.num_prefilling, st.num_decoding) == (1, 2)
    for _ in range(3):
        rec = step(s)
        assert (rec.kind, rec.decode_batch) == ("decode", 2)
    assert s.requests[b].num_computed_tokens == 64


@both_variants
def test_temporal_decodes_when_kv_cannot_admit(make_scheduler, async_sched):
    # 12 usable blocks: two running requests hold 10; the next needs 4.
    s = make_scheduler(async_sched, num_blocks=13)
    add(s, 70, max_tokens=50)
    add(s, 70, max_tokens=50)
    assert step(s).kind == "prefill"
    waiting = add(s, 60)
    rec = step(s)  # no empty prefill attempt: decode instead
    assert (rec.kind, rec.decode_batch) == ("decode", 2)
    assert outputs(s, waiting) == 0
    s.eco_set_phase("prefill")  # cannot admit, decodes paused: sleep, do not spin
    assert s.get_num_unfinished_requests() == 0


def test_commands_and_zmq_channel(make_scheduler):
    s = make_scheduler()
    ctrl = s.eco_control
    for bad in (b"", b"{", b'{"type": "reboot"}', b'{"type": "set_phase", "phase": "sideways"}',
                b'{"type": "set_phase"}', b'{"type": "get_status", "extra": 1}', 42):
        assert isinstance(decode_reply(ctrl.handle(bad)), ErrorReply)
    assert s.eco_phase == "temporal"

    before = time.time()
    reply = decode_reply(ctrl.handle(encode(PhaseCommand(phase="prefill"))))
    assert isinstance(reply, EngineStatus) and reply.phase == "prefill" and reply.phase_since >= before
    assert decode_reply(ctrl.handle(encode(GetStatus()))).phase_since == reply.phase_since  # idempotent

    # The same over ZeroMQ: read and applied when the engine loop asks
    # has_requests() (on the engine thread), answered with the status.
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(reply.addresses.status)
    req = ctx.socket(zmq.REQ)
    req.connect(reply.addresses.command)
    assert reply.addresses.command.startswith("tcp://127.0.0.1:")

    def ask(payload: bytes):
        req.send(payload)
        deadline = time.time() + 5
        while not req.poll(5):  # the engine loop's per-step check, on this thread
            assert time.time() < deadline, "no reply"
            s.has_requests()
        return decode_reply(req.recv())

    try:
        time.sleep(0.2)  # let the SUB connect
        got = ask(encode(PhaseCommand(phase="decode")))
        assert isinstance(got, EngineStatus) and got.phase == "decode"
        assert isinstance(ask(b"\xff garbage"), ErrorReply)
        assert sub.poll(2000)  # the phase change was pushed
        pushed = decode_reply(sub.recv())
        assert isinstance(pushed, EngineStatus) and pushed.phase == "decode"
    finally:
        req.close(0)
        sub.close(0)
