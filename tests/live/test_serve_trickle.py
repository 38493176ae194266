"""``ecoserve serve --policy ecoserve-trickle`` on a real vLLM engine (CPU build,
tiny generated model): the engine rests in the plugin's ``chunked`` phase with
the policy's budget, and every step it runs keeps that budget, decodes included,
as the simulator's chunked engines do (policy/trickle.py, sim/engine.py)."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from ecoserve.protocol import decode_status

pytestmark = pytest.mark.engine
START_TIMEOUT_S = 300
BUDGET = 48


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory, start_serve):
    s = start_serve(["--model", str(tiny_model), "--engines", "1", "--policy", "ecoserve-trickle",
                     "--chunk-size", str(BUDGET), "--slo-ttft", "60", "--slo-tpot", "1",
                     "--", "--max-model-len", "1024", "--enforce-eager", "--dtype", "bfloat16"],
                    tmp_path_factory.mktemp("serve-trickle"))  # fmt: skip
    with s.serving(START_TIMEOUT_S):
        yield s


def _engine_status(url: str):
    return decode_status(httpx.get(url + "/ecoserve/status", timeout=10).content)


def test_prompts_trickle_in_budgeted_chunks_beside_the_decodes(served):
    inst = served.status()["instances"][0]
    assert inst["phase"] == "chunked"
    before = _engine_status(inst["url"])
    assert before.phase == "chunked"
    rng = random.Random(7)
    prompts = [[rng.randrange(4, 1000) for _ in range(300)] for _ in range(4)]  # never cached

    async def burst() -> list[dict]:
        async with httpx.AsyncClient(base_url=served.url, timeout=120) as c:
            rs = await asyncio.gather(*(c.post("/v1/completions", json={
                "model": served.model, "prompt": p, "max_tokens": 12, "ignore_eos": True}) for p in prompts))  # fmt: skip
        assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
        return [r.json() for r in rs]

    replies = asyncio.run(burst())
    assert [r["usage"]["completion_tokens"] for r in replies] == [12] * 4
    after = _engine_status(inst["url"])
    steps = [s for s in after.steps if s.step > before.step]
    assert sum(s.prefill_tokens for s in steps) >= 4 * 300 - 4 * 16  # every prompt computed here, in these steps
    # The budget holds on every step, decodes included; and the first prompts to finish decode
    # beside the later prompts' chunks (no prefill window paused them: the TTFT SLO is loose).
    assert all(s.prefill_tokens + s.decode_batch <= BUDGET for s in steps), steps
    assert any(s.kind == "mixed" for s in steps), [s.kind for s in steps]
    assert after.phase == "chunked" and after.phase_since == before.phase_since  # no window in between
    assert after.prompt_budget is not None
