"""Live scaling and engine replacement, with stand-in engines as real child
processes (``python -m ecoserve.testing.fake_engine`` started by the LocalLauncher).

Fast plumbing checks of the coordinator's engine lifecycle: add, drain,
remove, split, merge, the autoscaler following the mitosis planner, a dead
or hung engine replaced, and the admin endpoints. The proof on vLLM itself is
tests/live/test_scaling_engines.py.
"""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import pytest

from ecoserve.engine.launcher import LocalLauncher, group_alive
from ecoserve.live import fleet as fleet_module
from ecoserve.live.coordinator import Coordinator
from ecoserve.policy import MitosisConfig
from tests.live.helpers import FAKE_ENGINE_CMD, served, wait_until


def fake_launcher(tmp_path, slots: int, *extra: str) -> LocalLauncher:
    return LocalLauncher(
        "fake-model", slots=slots, device="cpu", log_dir=tmp_path, base_cmd=[*FAKE_ENGINE_CMD, *extra], stop_grace=2.0
    )


def pids(coord: Coordinator) -> dict[str, int]:
    return {i["id"]: i["pid"] for i in coord.status()["instances"]}


def layout(coord: Coordinator) -> list[list[str]]:
    return [m["instances"] for m in coord.layout()]


async def test_add_then_drain_an_engine_that_holds_requests(tmp_path):
    launcher = fake_launcher(tmp_path, 2, "--token-interval", "0.01")
    async with Coordinator("fake-model", engines=1, launcher=launcher, max_engines=2, policy="round-robin") as coord:
        assert (await coord.generate("a b", max_tokens=3))["usage"]["completion_tokens"] == 3
        new = await coord.add_engine()
        assert new == "engine-1" and layout(coord) == [["engine-0", "engine-1"]]
        assert launcher.capacity() == 0
        with pytest.raises(ValueError, match="slots are free"):
            await coord.add_engine()
        # Long requests on both engines, then drain engine-1 under them.
        streams = [asyncio.create_task(coord.generate(f"p{i}", max_tokens=150)) for i in range(6)]
        await wait_until(lambda: all(i["num_running"] + i["num_waiting"] > 0 for i in coord.status()["instances"]),
                         10, "requests on both engines")  # fmt: skip
        pid = pids(coord)["engine-1"]
        held = next((i["num_running"] + i["num_waiting"]) for i in coord.status()["instances"] if i["id"] == "engine-1")
        removal = asyncio.create_task(coord.remove_engine("engine-1"))
        await asyncio.sleep(0.3)
        assert not removal.done()  # a drain waits for what the engine holds
        assert next(i for i in coord.status()["instances"] if i["id"] == "engine-1")["draining"]
        late = await coord.generate("late", max_tokens=2)  # new work goes to engine-0 only
        assert late["usage"]["completion_tokens"] == 2
        await asyncio.wait_for(removal, 20)
        replies = await asyncio.gather(*streams)
        assert all(r["usage"]["completion_tokens"] == 150 for r in replies)  # nothing cut short
        assert held > 0 and layout(coord) == [["engine-0"]] and "engine-1" not in pids(coord)
        assert not group_alive(pid)  # stopped once drained
        assert launcher.capacity() == 1
        with pytest.raises(ValueError, match="last engine"):
            await coord.remove_engine("engine-0")
        with pytest.raises(KeyError):
            await coord.remove_engine("engine-9")
        kinds = [e["event"] for e in coord.status()["events"]]
        assert kinds == ["added", "draining", "removed"]


async def test_killed_engine_is_replaced_and_its_unstarted_requests_rerouted(tmp_path):
    launcher = fake_launcher(tmp_path, 3, "--prefill-delay", "1.5")
    async with Coordinator("fake-model", engines=2, launcher=launcher, policy="round-robin") as coord:
        victim = pids(coord)["engine-1"]
        sent = [asyncio.create_task(coord.generate(f"p{i}", max_tokens=4)) for i in range(6)]
        await wait_until(lambda: coord.status()["instances"][1]["num_waiting"] >= 2, 10, "routing")
        os.killpg(victim, signal.SIGKILL)
        replies = await asyncio.wait_for(asyncio.gather(*sent), 30)
        assert all(r["usage"]["completion_tokens"] == 4 for r in replies)  # re-routed, nothing lost
        st = coord.status()
        assert st["requeued_total"] >= 2
        await wait_until(lambda: coord.status()["replaced_total"] == 1, 30, "the replacement")
        assert sorted(pids(coord)) == ["engine-0", "engine-2"]
        events = [(e["event"], e["instance"]) for e in coord.status()["events"]]
        assert ("failed", "engine-1") in events and ("replaced", "engine-1") in events
        reply = await coord.generate("after", max_tokens=2)
        assert reply["usage"]["completion_tokens"] == 2
        assert not group_alive(victim)


async def test_hung_engine_is_detected_killed_and_replaced(tmp_path, monkeypatch):
    monkeypatch.setattr(fleet_module, "HEALTH_TIMEOUT_S", 0.5)
    monkeypatch.setattr(fleet_module, "HEALTH_MISSES", 2)
    launcher = fake_launcher(tmp_path, 2)
    async with Coordinator("fake-model", engines=1, launcher=launcher) as coord:
        hung = pids(coord)["engine-0"]
        os.killpg(hung, signal.SIGSTOP)  # alive, but answers nothing
        try:
            waiting = asyncio.create_task(coord.generate("p", max_tokens=3))  # keeps its place meanwhile
            await wait_until(lambda: coord.status()["replaced_total"] == 1, 40, "the hung engine's replacement")
            assert (await asyncio.wait_for(waiting, 20))["usage"]["completion_tokens"] == 3
            assert sorted(pids(coord)) == ["engine-1"] and not group_alive(hung)
            failed = [e for e in coord.status()["events"] if e["event"] == "failed"]
            assert failed and "hung" in failed[0]["detail"]
        finally:
            if group_alive(hung):
                os.killpg(hung, signal.SIGKILL)


async def test_autoscaler_grows_splits_then_shrinks_and_merges(tmp_path):
    # Every request's first token takes 0.4 s against a 0.2 s TTFT SLO: the
    # planner scales out to the maximum; with N_u = 2 the third engine splits
    # the macro instance. Then the load stops and it scales back in, merging.
    cfg = MitosisConfig(macro_min=1, macro_max=2, min_instances=1, max_instances=3,
                        ttft_window_s=1.5, cooldown_s=0.5, scale_in_hold_s=1.0)  # fmt: skip
    launcher = fake_launcher(tmp_path, 3, "--prefill-delay", "0.4")
    async with Coordinator("fake-model", engines=1, launcher=launcher, autoscale=cfg, slo_ttft=0.2) as coord:
        seen_layouts = []
        done = []

        async def load() -> None:
            while len(layout(coord)) < 2 or sum(map(len, layout(coord))) < 3:
                done.append(asyncio.create_task(coord.generate("p", max_tokens=2)))
                seen_layouts.append(layout(coord))
                await asyncio.sleep(0.05)

        await asyncio.wait_for(load(), 60)
        assert layout(coord) == [["engine-0"], ["engine-1", "engine-2"]]  # grew 1 -> 2 -> 3, then split
        assert [["engine-0", "engine-1"]] in seen_layouts
        replies = await asyncio.gather(*done)
        assert all(r["usage"]["completion_tokens"] == 2 for r in replies)
        def kinds() -> list[str]:
            return [e["event"] for e in coord.status()["events"]]

        await wait_until(lambda: kinds().count("removed") == 2, 60, "scale-in back to one engine")
        assert layout(coord) == [["engine-0"]] and kinds().count("added") == 2
        kinds = kinds()
        assert "split" in kinds and "merged" in kinds
        assert kinds.index("split") < kinds.index("merged")
        assert "failed" not in kinds and "error" not in kinds
        assert launcher.capacity() == 2


async def test_admin_endpoints(tmp_path):
    launcher = fake_launcher(tmp_path, 3)
    async with Coordinator("fake-model", engines=1, launcher=launcher) as coord:
        async with served(coord, api_key="k") as base:
            key = {"Authorization": "Bearer k"}
            async with httpx.AsyncClient(base_url=base, timeout=60) as http:
                assert (await http.get("/ecoserve/layout")).status_code == 401
                assert (await http.post("/ecoserve/engines", json={})).status_code == 401
                r = await http.post("/ecoserve/engines", json={}, headers=key)
                assert r.status_code == 201 and r.json()["id"] == "engine-1"
                r = await http.post("/ecoserve/engines", json={"macro": 1}, headers=key)  # a new macro instance
                assert r.status_code == 201
                assert [m["instances"] for m in r.json()["macro_instances"]] == [["engine-0", "engine-1"], ["engine-2"]]
                r = await http.post("/ecoserve/macro/merge", json={"into": 0, "other": 1}, headers=key)
                assert [m["instances"] for m in r.json()["macro_instances"]] == [["engine-0", "engine-1", "engine-2"]]
                r = await http.post("/ecoserve/macro/split", json={"macro": 0}, headers=key)
                assert [m["instances"] for m in r.json()["macro_instances"]] == [["engine-0"], ["engine-1", "engine-2"]]
                r = await http.post("/ecoserve/macro/split", json={"macro": 5}, headers=key)
                assert r.status_code == 404 and "macro" in r.json()["error"]["message"]
                r = await http.post("/ecoserve/engines", json={"macros": 1}, headers=key)
                assert r.status_code == 400
                r = await http.post("/ecoserve/engines", json={}, headers=key)  # no free slot
                assert r.status_code == 409 and "slots" in r.json()["error"]["message"]
                assert (await http.delete("/ecoserve/engines/nope", headers=key)).status_code == 404
                r = await http.delete("/ecoserve/engines/engine-2", headers=key)
                assert r.status_code == 200
                assert [m["instances"] for m in r.json()["macro_instances"]] == [["engine-0"], ["engine-1"]]
                assert (await http.delete("/ecoserve/engines/engine-1", headers=key)).status_code == 200
                r = await http.delete("/ecoserve/engines/engine-0", headers=key)
                assert r.status_code == 409 and "last engine" in r.json()["error"]["message"]
                r = await http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}, headers=key)
                assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--engines", "2", "--max-engines", "1"], "--min-engines (2) <= --engines (2) <= --max-engines (1)"),
        (["--max-engines", "3", "--macro-min", "2", "--macro-max", "2"], "cannot split into two halves"),
        (["--max-engines", "3", "--policy", "round-robin"], "needs --policy ecoserve"),
        (["--engine-url", "http://x:1", "--max-engines", "3"], "give --model PATH"),
    ],
)
def test_serve_refuses_bad_scaling_options(args, message):
    from click.testing import CliRunner

    from ecoserve.cli.serve import serve

    result = CliRunner().invoke(serve, ["--model", "hub/model-name", *args])  # refused before any engine starts
    assert result.exit_code == 2 and message in result.output, result.output
