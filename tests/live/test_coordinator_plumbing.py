"""The coordinator's plumbing, against stand-in engines (ecoserve.testing.fake_engine).

Fast and deterministic: routing actions carried out, phases commanded in
order, token accounting, rejection and queueing, client disconnects, engine
failure with re-routing, auth. The proof that it works with vLLM itself is
tests/live/test_serve_engines.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import httpx
import pytest

from ecoserve.live.coordinator import Coordinator, RequestError
from tests.live.helpers import fakes, served, wait_until


# ---------------------------------------------------------------------------------------


async def test_generate_and_stream_through_python_api():
    async with fakes(2, token_interval=0.001) as (a, b):
        async with Coordinator(engine_urls=[a.url, b.url]) as coord:
            reply = await coord.generate("one two three", max_tokens=5)
            assert reply["choices"][0]["text"] == " tok" * 5 and reply["usage"]["completion_tokens"] == 5
            chunks = [c async for c in coord.generate_stream("x y", max_tokens=4)]
            assert [c["choices"][0]["text"] for c in chunks] == [" tok"] * 4
            assert all("usage" not in c for c in chunks)  # the client did not ask for it
            chat = await coord.chat([{"role": "user", "content": "hi"}], max_tokens=3, n=2)
            assert [c["message"]["content"] for c in chat["choices"]] == [" tok" * 3] * 2
            assert chat["usage"]["completion_tokens"] == 6
            assert coord.status()["in_flight"] == 0
            # Fed by the engines' status pushes (ZeroMQ; a subscriber may miss the very first ones).
            await wait_until(lambda: coord.status()["predictor"]["observations"] >= 1, what="a prefill observation")
            # EcoServe starts engines in decode, opens a prefill window per burst, closes it on the
            # first token (the command goes out asynchronously, right after).
            await wait_until(lambda: a.phase_log[-1] == "decode", what="the window to close")
            assert a.phase_log[0] == "decode" and "prefill" in a.phase_log
        assert a.phase_log[-1] == "temporal"  # an attached engine is handed back scheduling by itself


async def test_baselines_run_engines_mixed_and_spread():
    async with fakes(2) as (a, b):
        async with Coordinator(engine_urls=[a.url, b.url], policy="round-robin") as coord:
            await asyncio.gather(*(coord.generate("p", max_tokens=3) for _ in range(6)))
            assert a.phase_log == b.phase_log == ["mixed"]
            assert [i["routed_total"] for i in coord.status()["instances"]] == [3, 3]


async def test_trickle_policy_rests_engines_chunked_with_its_step_budget():
    """--policy ecoserve-trickle: every chunked command carries the policy's
    budget (decodes included), so the engines chunk as its predictions assume;
    prompts that chunking serves in time open no prefill window."""
    from ecoserve.policy import SLO, PolicyConfig

    config = PolicyConfig("ecoserve-trickle", SLO(30.0, 1.0), trickle_budget=48)
    async with fakes(2, token_interval=0.001) as (a, b):
        async with Coordinator(engine_urls=[a.url, b.url], config=config) as coord:
            replies = await asyncio.gather(*(coord.generate("one two three", max_tokens=4) for _ in range(4)))
            assert all(r["usage"]["completion_tokens"] == 4 for r in replies)
            for e in (a, b):
                assert e.phase_log == ["chunked"]  # a loose TTFT SLO: every prompt trickles, no window
                assert e.step_budgets == [48]
            assert sum(i["routed_total"] for i in coord.status()["instances"]) == 4
        assert a.phase_log[-1] == "temporal" and a.step_budgets[-1] is None  # handed back: no budget sent


async def test_rejected_and_bad_requests_are_4xx():
    async with fakes(1, kv_blocks=4, block_size=16) as (a,):  # 64 KV tokens
        async with Coordinator(engine_urls=[a.url]) as coord:
            with pytest.raises(RequestError) as e:
                await coord.generate("p", max_tokens=100)
            assert e.value.status == 400 and "KV" in e.value.message
            with pytest.raises(RequestError) as e:
                await coord.generate("p", max_tokens=8, model="other")
            assert e.value.status == 404
            with pytest.raises(RequestError) as e:  # refused by the schema, as the front door refuses it
                await coord.generate("p", max_tokens=8, temperature=-1)
            assert e.value.status == 400 and "temperature" in e.value.message
            assert coord.status()["in_flight"] == 0 and coord.router.instances()[0].kv_reserved == 0


async def test_the_python_api_validates_as_the_front_door_and_takes_one_policy_config():
    from ecoserve.policy import SLO, PolicyConfig

    config = PolicyConfig("ecoserve", SLO(2.0, 0.05), slack_mode="mean", decode_margin_s=0.01)
    async with fakes(1) as (a,):
        async with Coordinator(engine_urls=[a.url], config=config) as coord:
            checker = coord.router.constraint_checker()
            assert (checker.slack_mode, checker.decode_margin_s, checker.slo) == ("mean", 0.01, SLO(2.0, 0.05))
            for bad, param in (({"n": 0}, "n"), ({"stream_options": {"include_usage": True}}, "stream_options"),
                               ({"max_tokens": "5"}, "max_tokens"), ({"prompt": []}, "prompt")):  # fmt: skip
                body = {"max_tokens": 4, **bad}
                prompt = body.pop("prompt", "p")
                with pytest.raises(RequestError) as e:
                    await coord.generate(prompt, **body)
                assert e.value.status == 400 and e.value.param == param, (bad, e.value.message)
            assert a.finished == a.aborted == a.running == 0  # none reached the engine
            assert coord.status()["in_flight"] == 0


async def test_requests_queue_behind_a_full_window_and_all_finish():
    # TTFT SLO of 10 ms against a predicted ~11 ms prefill: one request per
    # window, so a burst queues and is routed window after window.
    async with fakes(1, token_interval=0.001) as (a,):
        async with Coordinator(engine_urls=[a.url], slo_ttft=0.01, slo_tpot=0.05) as coord:
            queued = []
            coord.observer.on_queued = queued.append  # type: ignore[method-assign]
            replies = await asyncio.gather(*(coord.generate("p q", max_tokens=4) for _ in range(5)))
            assert all(r["usage"]["completion_tokens"] == 4 for r in replies)
            assert queued and set(queued) <= {"ttft", "tpot", "queue"}
            assert a.phase_log[-1] == "decode"  # the last window closed
            assert coord.status()["pending"] == 0


async def test_client_disconnect_aborts_everywhere():
    async with fakes(1, token_interval=0.01) as (a,):
        async with Coordinator(engine_urls=[a.url]) as coord:
            async with served(coord) as url:
                body = {"prompt": "p", "max_tokens": 1000, "stream": True}
                async with httpx.AsyncClient() as c:
                    async with c.stream("POST", url + "/v1/completions", json=body) as r:
                        async for line in r.aiter_lines():
                            if line.startswith("data: {"):
                                break
                await wait_until(lambda: a.aborted == 1, what="the engine to see the abort")
                await wait_until(lambda: coord.status()["in_flight"] == 0, what="the coordinator to forget it")
                # Also while it waits for a phase: decode holds new requests back.
                a.phase, a.honour_phases = "decode", True
                coord.engines["engine-0"].acked_phase = "decode"
                async with httpx.AsyncClient() as c:
                    with contextlib.suppress(httpx.ReadTimeout):
                        await c.post(url + "/v1/completions", json={"prompt": "p", "max_tokens": 5}, timeout=0.3)
                await wait_until(lambda: coord.status()["in_flight"] == 0, what="the waiting request to be dropped")


async def test_dead_engine_requests_move_to_the_other_one(start_fake_engine):
    with start_fake_engine(prefill_delay=30) as slow:  # a process: killed below
        async with fakes(1) as (a,):
            dead_url = slow.url
            async with Coordinator(engine_urls=[dead_url, a.url], policy="round-robin") as coord:
                first = asyncio.create_task(coord.generate("p", max_tokens=3))  # lands on the slow one
                await wait_until(lambda: coord.status()["instances"][0]["num_waiting"] == 1, what="routing")
                slow.proc.send_signal(signal.SIGKILL)
                reply = await asyncio.wait_for(first, 15)
                assert reply["usage"]["completion_tokens"] == 3  # re-routed: nothing lost
                st = coord.status()["instances"]
                assert not st[0]["healthy"] and st[1]["healthy"] and st[1]["routed_total"] == 1
                assert (await coord.generate("p", max_tokens=2))["usage"]["completion_tokens"] == 2


async def test_http_front_door_auth_models_metrics():
    async with fakes(1) as (a,):
        async with Coordinator(engine_urls=[a.url]) as coord:
            async with served(coord, api_key="sesame") as url, httpx.AsyncClient(base_url=url) as c:
                assert (await c.get("/health")).status_code == 200
                r = await c.post("/v1/completions", json={"prompt": "p"})
                assert r.status_code == 401 and r.json()["error"]["type"] == "AuthenticationError"
                r = await c.post("/v1/completions", json={"prompt": "p"}, headers={"Authorization": "Bearer nope"})
                assert r.status_code == 401
                auth = {"Authorization": "Bearer sesame"}
                assert (await c.get("/v1/models", headers=auth)).json()["data"][0]["id"] == "fake-model"
                r = await c.post("/v1/completions", json={"prompt": "p", "max_tokens": 2}, headers=auth)
                assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
                engine = coord.status()["instances"][0]["id"]
                assert r.headers["x-ecoserve-engine"] == engine  # which engine served it
                for bad in (
                    {"prompt": []},
                    {"prompt": "p", "n": 0},
                    {"messages": []},
                    {"prompt": "p", "stream_options": {}},
                ):
                    path = "/v1/chat/completions" if "messages" in bad else "/v1/completions"
                    r = await c.post(path, json=bad, headers=auth)
                    assert r.status_code == 400, (bad, r.text)
                    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
                m = (await c.get("/metrics")).text
                assert 'ecoserve_requests_total{outcome="success"} 1.0' in m
                assert 'ecoserve_requests_total{outcome="client_error"}' in m
                assert "/v1/completions" in (await c.get("/openapi.json")).json()["paths"]
                body = {"prompt": "p", "max_tokens": 2, "stream": True}
                async with c.stream("POST", "/v1/completions", json=body, headers=auth) as s:
                    assert s.headers["x-ecoserve-engine"] == engine
                    await s.aread()
                assert coord.status()["instances"][0]["prefix_cache"] is None  # a stand-in has no prefix cache
