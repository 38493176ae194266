"""The plugin asks Linux for the AMX tile state in every vLLM process
(vllm_plugin._request_amx): on a CPU with AMX, vLLM 0.32's bf16 CPU attention
runs tile instructions without asking, so an engine whose first prefill was 1-4
tokens died with SIGILL. A real engine, its first request 2 tokens long."""

from __future__ import annotations

import httpx
import pytest
import torch

pytestmark = pytest.mark.engine

ARGS = ("--served-model-name", "tiny", "--enforce-eager", "--max-model-len", "512", "--dtype", "bfloat16")
START_TIMEOUT_S = 300


def _first_request_is_short(start_engine, tiny_model, tmp_path, env) -> httpx.Response:
    with start_engine(tiny_model, *ARGS, env=env, log_dir=tmp_path) as server:
        server.wait_ready(START_TIMEOUT_S)
        return httpx.post(server.url + "/v1/completions", timeout=120,
                          json={"model": "tiny", "prompt": [1, 75], "max_tokens": 3, "ignore_eos": True})  # fmt: skip


def test_an_engine_whose_first_prompt_is_two_tokens_serves_it(start_engine, tiny_model, tmp_path):
    r = _first_request_is_short(start_engine, tiny_model, tmp_path, {})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3, r.text


@pytest.mark.skipif(not torch.cpu._is_amx_tile_supported(), reason="the crash needs a CPU with AMX")
def test_without_the_plugin_the_same_engine_dies_on_an_amx_cpu(start_engine, tiny_model, tmp_path):
    """The control: vLLM alone (no general plugin loaded) on the same CPU."""
    r = _first_request_is_short(start_engine, tiny_model, tmp_path, {"VLLM_PLUGINS": ""})
    assert r.status_code == 500, r.text
