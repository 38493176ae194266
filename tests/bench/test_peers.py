"""The benchmark's real peer: vllm-router (from PyPI) started by our harness
over a stand-in engine, and a streamed completion through it (the benchmark
client always streams, to time the first token)."""

from __future__ import annotations

import json

import httpx
import pytest

from ecoserve.bench.peers import VllmRouter


def test_vllm_router_serves_a_completion_from_the_engine_behind_it(tmp_path, engine):
    with VllmRouter([engine], policy="round_robin", log_path=tmp_path / "router.log") as router:
        body = {"model": "fake-model", "prompt": "hello", "max_tokens": 5, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        with httpx.stream("POST", router.url + "/v1/completions", json=body, timeout=30) as s:
            assert s.status_code == 200
            events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks[-1]["usage"]["completion_tokens"] == 5
        assert "".join(c["choices"][0]["text"] for c in chunks if c.get("choices"))
    # Gone with its process group.
    with pytest.raises(httpx.HTTPError):
        httpx.get(router.url + "/health", timeout=2)


def test_an_unknown_router_policy_is_refused_before_anything_starts():
    with pytest.raises(ValueError, match="unknown vllm-router policy"):
        VllmRouter(["http://127.0.0.1:1"], policy="fastest")


def test_two_routers_run_side_by_side(tmp_path, engine):
    """Each gets its own metrics port: vllm-router's default (29000) would make
    the second exit, as it did beside a running benchmark."""
    with VllmRouter([engine], log_path=tmp_path / "a.log") as a, VllmRouter([engine], log_path=tmp_path / "b.log") as b:
        assert httpx.get(a.url + "/health", timeout=5).status_code == 200
        assert httpx.get(b.url + "/health", timeout=5).status_code == 200
