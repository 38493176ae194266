"""Phase leases on the real EcoServe scheduler, driven without a model (as in
tests/plugin/test_plugin_scheduler.py): a leased phase lapses back to the startup
phase unless renewed; an unleased one holds; the alarm wakes a sleeping
engine loop at the deadline. The real-engine check (a request held by a
leased ``decode`` completes once the lease lapses) is in tests/plugin/test_control_fuzz.py.
"""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("vllm")

import torch  # noqa: E402
from vllm.engine.arg_utils import EngineArgs  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402

from ecoserve.protocol import EngineStatus, ErrorReply, PhaseCommand, decode_reply, encode  # noqa: E402
from vllm_plugin.lease import PhaseLease  # noqa: E402
from vllm_plugin.scheduler import EcoServeScheduler  # noqa: E402


@pytest.fixture
def scheduler(tiny_model, monkeypatch):
    monkeypatch.setenv("ECOSERVE_PHASE", "temporal")
    config = EngineArgs(model=str(tiny_model), max_model_len=512, enforce_eager=True,
                        dtype="bfloat16").create_engine_config()  # fmt: skip
    config.cache_config.num_gpu_blocks = 64
    spec = FullAttentionSpec(block_size=16, num_kv_heads=2, head_size=64, dtype=torch.bfloat16)
    kv = KVCacheConfig(num_blocks=64, kv_cache_tensors=[], kv_cache_groups=[KVCacheGroupSpec(["l0"], spec)])
    s = EcoServeScheduler(vllm_config=config, kv_cache_config=kv, structured_output_manager=StructuredOutputManager(config),
                          block_size=16)  # fmt: skip
    yield s
    s.shutdown()


def command(s, **kw) -> EngineStatus:
    reply = decode_reply(s.eco_control.handle(encode(PhaseCommand(**kw))))
    assert isinstance(reply, EngineStatus), reply
    return reply


def test_a_leased_phase_lapses_unless_renewed(scheduler):
    s = scheduler
    assert command(s, phase="decode", lease_s=0.4).phase == "decode"
    time.sleep(0.25)
    s.has_requests()  # the engine loop's check
    assert s.eco_phase == "decode"
    command(s, phase="decode", lease_s=0.4)  # renewed
    time.sleep(0.25)
    s.has_requests()
    assert s.eco_phase == "decode"  # 0.5 s after the first command, 0.25 s after the renewal
    time.sleep(0.25)
    s.has_requests()
    assert s.eco_phase == "temporal"  # lapsed: back to the startup phase
    assert s.eco_control.lease.deadline is None


def test_an_unleased_command_holds_and_cancels_a_lease(scheduler):
    s = scheduler
    command(s, phase="prefill", lease_s=0.2)
    command(s, phase="decode")  # no lease: holds until the next command
    time.sleep(0.3)
    s.has_requests()
    assert s.eco_phase == "decode"


def test_bad_leases_are_rejected(scheduler):
    s = scheduler
    for bad in (b'{"type": "set_phase", "phase": "decode", "lease_s": 0}',
                b'{"type": "set_phase", "phase": "decode", "lease_s": -1}',
                b'{"type": "set_phase", "phase": "decode", "lease_s": "5"}',
                b'{"type": "set_phase", "phase": "decode", "lease_s": 1e9}'):  # fmt: skip
        assert isinstance(decode_reply(s.eco_control.handle(bad)), ErrorReply), bad
    assert s.eco_phase == "temporal" and s.eco_control.lease.deadline is None


def test_the_alarm_wakes_the_engine_loop_at_the_deadline():
    woke = threading.Event()
    lease = PhaseLease(woke.set)
    try:
        t0 = time.monotonic()
        lease.grant(0.3)
        lease.grant(0.3)  # a renewal moves the alarm
        assert woke.wait(2)
        assert 0.25 <= time.monotonic() - t0 < 1.0
        assert lease.expired() and not lease.expired()  # once
        woke.clear()
        lease.grant(0.2)
        lease.grant(None)  # cancelled
        assert not woke.wait(0.4) and not lease.expired()
    finally:
        lease.close()
