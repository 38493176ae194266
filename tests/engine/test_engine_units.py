"""Units of ecoserve.engine: launching and stopping process groups, core/GPU
plans, SSE splitting, token tallies, and folding chunks into one reply."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

import pytest

from ecoserve.openai.aggregate import ResponseBuilder
from ecoserve.openai.chunks import StreamTally, strip_usage
from ecoserve.engine.launcher import (
    EngineStartError, build_engines, check_engine_args, group_alive, stop_engines, wait_healthy,
)  # fmt: skip
from ecoserve.engine.resources import PlacementError, core_list, plan_engines, ranks_per_engine
from ecoserve.openai.sse import SSESplitter

PY = sys.executable


def _gone(pgid: int) -> bool:
    return not group_alive(pgid)


# ---- launcher ---------------------------------------------------------------------------


def test_engine_that_exits_reports_its_log_tail(tmp_path):
    slots = plan_engines(1, device="cpu", cores=[0])
    engines = build_engines(
        "m", slots, [], tmp_path, base_cmd=[PY, "-c", "print('boom: bad model'); raise SystemExit(3)"]
    )
    engines[0].start()
    with pytest.raises(EngineStartError, match=r"(?s)exited with code 3.*boom: bad model"):
        asyncio.run(wait_healthy(engines, timeout=30))
    stop_engines(engines)


def test_unhealthy_engine_times_out_and_its_whole_group_is_killed(tmp_path):
    # A leader that ignores SIGTERM and a child that outlives it: both must go.
    script = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); print('up', flush=True); time.sleep(600)"
    )
    engines = build_engines("m", plan_engines(1, device="cpu", cores=[0]), [], tmp_path, base_cmd=[PY, "-c", script])
    engines[0].start()
    with pytest.raises(EngineStartError, match="not healthy after"):
        asyncio.run(wait_healthy(engines, timeout=1.5))
    pid = engines[0].pid
    t = time.monotonic()
    stop_engines(engines, grace=1.0)
    assert _gone(pid) and time.monotonic() - t < 10


def test_engine_env_pins_cores_and_enables_plugin(tmp_path):
    slots = plan_engines(2, device="cpu", cores=[0, 1, 2, 3])
    engines = build_engines("/models/x", slots, ["--max-model-len", "512"], tmp_path, initial_phase="mixed")
    assert [e.env["VLLM_CPU_OMP_THREADS_BIND"] for e in engines] == ["0-1", "2-3"]
    assert all("ecoserve" in e.env["VLLM_PLUGINS"].split(",") and e.env["ECOSERVE_PHASE"] == "mixed" for e in engines)
    cmd = engines[0].cmd
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"] and cmd[-2:] == ["--max-model-len", "512"]
    assert "vllm_plugin.scheduler.EcoServeScheduler" in cmd and len({e.port for e in engines}) == 2
    with pytest.raises(ValueError, match="--port"):
        check_engine_args(["--port", "9"])


def test_sigterm_to_parent_takes_engines_down(tmp_path):
    # The kernel's parent-death signal: even without our handlers, the engine dies with us.
    script = (
        "import sys; from pathlib import Path; from ecoserve.engine.launcher import build_engines; "
        "from ecoserve.engine.resources import plan_engines; "
        f"e = build_engines('m', plan_engines(1, device='cpu', cores=[0]), [], Path({str(tmp_path)!r}), "
        "base_cmd=[sys.executable, '-c', 'import time; time.sleep(600)'])[0]; e.start(); print(e.pid, flush=True); "
        "import time; time.sleep(600)"
    )
    import subprocess

    parent = subprocess.Popen([PY, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)  # no atexit, no handlers: only the kernel can help
    parent.wait()
    deadline = time.monotonic() + 10
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(child)


# ---- resources --------------------------------------------------------------------------


def test_plans():
    assert [s.env for s in plan_engines(2, device="cpu", cores=[0, 1])] == [
        {"VLLM_CPU_OMP_THREADS_BIND": "0"}, {"VLLM_CPU_OMP_THREADS_BIND": "1"}]  # fmt: skip
    tp2 = plan_engines(2, ["--tensor-parallel-size=2"], device="cpu", cores=list(range(8)))
    assert [s.env["VLLM_CPU_OMP_THREADS_BIND"] for s in tp2] == ["0-1|2-3", "4-5|6-7"]
    shared = plan_engines(3, device="cpu", cores=[0, 1])
    assert all(s.shared for s in shared)
    gpu = plan_engines(2, ["-tp", "2"], device="auto", gpus=["0", "1", "2", "3"])
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in gpu] == ["0,1", "2,3"] and gpu[0].device == "cuda"
    with pytest.raises(PlacementError, match="need 4 GPUs"):
        plan_engines(2, ["-tp", "2"], device="cuda", gpus=["0", "1"])
    assert ranks_per_engine(["-tp", "2", "--pipeline-parallel-size", "3"]) == 6
    assert core_list([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


# ---- stream reading ---------------------------------------------------------------------


def test_sse_splitter_handles_any_cut():
    events = [b'{"a":1}', b'{"b":2}', b"[DONE]"]
    wire = b"".join(b"data: " + e + b"\n\n" for e in events) + b": ping\n\n"
    for cut in range(1, len(wire)):
        s = SSESplitter()
        assert s.feed(wire[:cut]) + s.feed(wire[cut:]) == events
    assert SSESplitter().feed(b"data: x\r\n\r\nevent: y\ndata: 1\ndata: 2\n\n") == [b"x", b"1\n2"]


def test_tally_counts_from_usage_and_restores_what_client_asked():
    def chunk(tokens: int, choices: bool = True) -> bytes:
        c = '[{"index":0,"text":"t","finish_reason":null}]' if choices else "[]"
        return f'{{"id":"x","choices":{c},"usage":{{"prompt_tokens":3,"total_tokens":{3 + tokens},"completion_tokens":{tokens}}}}}'.encode()

    t = StreamTally(keep_usage=False, keep_continuous=False)
    out = t.process([chunk(1), chunk(3), chunk(3, choices=False), b"[DONE]"])
    assert t.tokens == 3 and t.done and len(out) == 2 and all(b"usage" not in o for o in out)
    assert json.loads(out[0]) == {"id": "x", "choices": [{"index": 0, "text": "t", "finish_reason": None}]}
    t = StreamTally(keep_usage=True, keep_continuous=False)
    assert len(t.process([chunk(1), chunk(2, choices=False)])) == 2
    t = StreamTally(keep_usage=True, keep_continuous=True)
    assert t.process([chunk(1)]) == [chunk(1)]
    # No usage (not vLLM): one token per choice with output.
    t = StreamTally(keep_usage=False, keep_continuous=False)
    t.process([b'{"choices":[{"index":0,"delta":{"content":"a"}},{"index":1,"delta":{"content":""}}]}'])
    assert t.tokens == 1
    nested = b'{"choices":[],"usage":{"prompt_tokens":1,"prompt_tokens_details":{"cached_tokens":0}},"x":1}'
    assert json.loads(strip_usage(nested)) == {"choices": [], "x": 1}
    t = StreamTally(keep_usage=False, keep_continuous=False)
    t.process([b'{"error":{"message":"boom","code":500}}'])
    assert t.error is not None


def test_response_builder_folds_chat_chunks():
    b = ResponseBuilder("chat")
    b.add({"id": "c1", "object": "chat.completion.chunk", "model": "m",
           "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})  # fmt: skip
    b.add({"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hel", "tool_calls": [
        {"index": 0, "id": "t0", "type": "function", "function": {"name": "f", "arguments": '{"a":'}}]},
        "logprobs": {"content": [{"token": "Hel"}]}}]})  # fmt: skip
    b.add({"id": "c1", "choices": [{"index": 0, "delta": {"content": "lo", "tool_calls": [
        {"index": 0, "function": {"arguments": " 1}"}}]}, "logprobs": {"content": [{"token": "lo"}]},
        "finish_reason": "stop"}]})  # fmt: skip
    b.add({"id": "c1", "choices": [], "usage": {"completion_tokens": 2}})
    r = b.result()
    msg = r["choices"][0]["message"]
    assert r["object"] == "chat.completion" and msg["role"] == "assistant" and msg["content"] == "Hello"
    assert msg["tool_calls"] == [
        {"index": 0, "id": "t0", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    ]
    assert [t["token"] for t in r["choices"][0]["logprobs"]["content"]] == ["Hel", "lo"]
    assert r["choices"][0]["finish_reason"] == "stop" and r["usage"] == {"completion_tokens": 2}
