"""Plugin pieces that need no engine: version gate, step planning, wire format."""

from __future__ import annotations

import msgspec
import pytest

from ecoserve.protocol import (
    EngineAddresses,
    EngineStatus,
    ErrorReply,
    GetStatus,
    PhaseCommand,
    StepRecord,
    decode_command,
    decode_reply,
    encode,
)
from vllm_plugin.phases import StepPlan, plan_step
from vllm_plugin.version import UnsupportedVllmVersion, check_vllm_version


@pytest.mark.parametrize("version", ["0.32.0", "0.32.4", "0.33.0", "0.33.1+cu129", "0.32.0+cpu"])
def test_supported_versions(version):
    assert check_vllm_version(version) == version


@pytest.mark.parametrize("version", ["0.31.2", "0.34.0", "1.0.0", "dev", ""])
def test_unsupported_versions_are_refused_clearly(version):
    with pytest.raises(UnsupportedVllmVersion, match=r"supports vLLM 0\.32\.x, 0\.33\.x; this is vLLM"):
        check_vllm_version(version)


def test_general_plugin_refuses_unsupported_vllm(monkeypatch):
    vllm = pytest.importorskip("vllm")
    import vllm_plugin

    vllm_plugin.register()  # the installed one is supported
    monkeypatch.setattr(vllm, "__version__", "0.30.1")
    with pytest.raises(UnsupportedVllmVersion, match="0.30.1"):
        vllm_plugin.register()


@pytest.mark.parametrize(
    "phase, can_prefill, can_decode, plan",
    [
        ("temporal", True, True, StepPlan.PREFILL),  # prefill priority
        ("temporal", False, True, StepPlan.DECODE),
        ("temporal", False, False, StepPlan.IDLE),
        ("prefill", True, True, StepPlan.PREFILL),
        ("prefill", False, True, StepPlan.IDLE),  # decodes pause, engine sleeps
        ("decode", True, True, StepPlan.DECODE),
        ("decode", True, False, StepPlan.IDLE),  # arrivals wait, engine sleeps
        ("mixed", True, True, StepPlan.STOCK),
        ("mixed", False, False, StepPlan.STOCK),
    ],
)
def test_plan_step(phase, can_prefill, can_decode, plan):
    assert plan_step(phase, can_prefill=can_prefill, can_decode=can_decode) is plan


def test_commands_decode_strictly():
    assert decode_command(b'{"type":"set_phase","phase":"prefill"}') == PhaseCommand(phase="prefill")
    assert decode_command(encode(GetStatus())) == GetStatus()
    for bad in [b'{"type":"set_phase","phase":"fast"}', b'{"type":"set_phase"}', b'{"phase":"decode"}',
                b'{"type":"get_status","x":1}', b'{"type":"exec","cmd":"rm"}', b"\x80\x81", b"[]"]:  # fmt: skip
        with pytest.raises(msgspec.DecodeError):
            decode_command(bad)


def test_reply_round_trip():
    status = EngineStatus(
        engine_id="e0", seq=3, time=1.0, phase="decode", phase_since=0.5, activity="decode",
        activity_since=0.6, step=7, num_waiting=2, num_prefilling=0, num_decoding=5,
        kv_blocks_free=90, kv_blocks_total=100, block_size=16, max_num_seqs=256,
        max_num_batched_tokens=2048,
        steps=[StepRecord(step=7, start=0.9, duration_s=0.01, kind="decode", prefill_tokens=0,
                          prefill_reqs=0, decode_batch=5, decode_context_tokens=400)],
        addresses=EngineAddresses(status="tcp://127.0.0.1:1", command="tcp://127.0.0.1:2"),
    )  # fmt: skip
    assert decode_reply(encode(status)) == status
    assert decode_reply(encode(ErrorReply(error="no"))) == ErrorReply(error="no")
