"""The Ray launcher on a real Ray cluster on this machine.

The cluster is started the way a real one is (`ray start --head` in a
subprocess, 2 CPUs, no dashboard) and reached by its address. One real vLLM
CPU engine (tiny model) runs as a Ray actor behind a Coordinator; stand-in
engines (``ecoserve.testing.fake_engine``, real processes) cover the paths that do
not need vLLM: an actor killed under a live engine, no room, a failed start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from ecoserve.live.coordinator import Coordinator
from ecoserve.engine.launcher import group_alive
from ecoserve.engine.launcher_api import EngineStartError
from ecoserve.engine.ray_launcher import (
    ACTOR_LOST, RayLauncher, RayUnavailableError, check_reachable, engine_resources, use_ray_token_if_any,
)  # fmt: skip
from ecoserve.engine.resources import PlacementError
from ecoserve.engine.status_stream import StatusSubscriber
from ecoserve.testing.ports import free_port
from tests.live.helpers import FAKE_ENGINE_CMD

ENGINE_ARGS = ["--max-model-len", "512", "--enforce-eager", "--dtype", "bfloat16"]
START_TIMEOUT_S = 300  # one engine on a shared 2-core machine


@pytest.fixture(autouse=True)
def _own_environment():
    """A RayLauncher puts its ZeroMQ secret into this process's environment
    (its own client side reads it there). Take it out after each test: later
    tests in this process would otherwise start every engine with CURVE on."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


# ---- without a cluster ---------------------------------------------------------------------


def test_engine_resources_follow_the_engine_arguments():
    assert engine_resources([], "cpu") == {"num_cpus": 1, "num_gpus": 0}
    assert engine_resources(["--tensor-parallel-size", "2"], "cpu", cpus_per_rank=3) == {"num_cpus": 6, "num_gpus": 0}
    assert engine_resources(["-tp", "4"], "cuda") == {"num_cpus": 1, "num_gpus": 4}
    assert engine_resources(["--tensor-parallel-size=2", "--pipeline-parallel-size", "2"], "cuda")["num_gpus"] == 4
    with pytest.raises(PlacementError, match="integer"):
        engine_resources(["-tp", "two"], "cuda")
    with pytest.raises(PlacementError, match="device"):
        engine_resources([], "tpu")
    with pytest.raises(PlacementError, match="cpus_per_rank"):
        engine_resources([], "cpu", cpus_per_rank=0)


def test_an_unreachable_cluster_fails_fast_with_a_clear_message():
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(RayUnavailableError, match=rf"cannot reach the Ray cluster at 127.0.0.1:{port}.*ray start --head"):
        RayLauncher("m", address=f"127.0.0.1:{port}")
    assert time.monotonic() - t0 < 10  # ray.init alone retries for minutes
    with pytest.raises(RayUnavailableError, match="expected HOST:PORT"):
        check_reachable("no-port-here")


def test_the_launcher_refuses_flags_it_owns():
    with pytest.raises(ValueError, match="--port is set by ecoserve"):
        RayLauncher("m", ["--port", "9000"], address="127.0.0.1:1")


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--model", "hub/m", "--ray-address", "127.0.0.1:1"], 2, "--ray-address needs --launcher ray"),
        (["--engine-url", "http://x:1", "--launcher", "ray"], 2, "--launcher ray starts engines for --model"),
        (["--model", "hub/m", "--launcher", "ray", "--ray-address", "127.0.0.1:1"], 1, "cannot reach the Ray cluster"),
    ],
)
def test_serve_ray_options(args, code, message):
    from click.testing import CliRunner

    from ecoserve.cli.serve import serve

    result = CliRunner().invoke(serve, [*args, "--port", "0"])
    assert result.exit_code == code and message in result.output, result.output


# ---- on a cluster --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    """A one-node Ray cluster, started like a real head node; yields its address."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ecoray-")  # short: Ray's socket paths must stay under 108 bytes
    ray_cli = Path(sys.executable).parent / "ray"
    cmd = [str(ray_cli), "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
           "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}", "--block"]  # fmt: skip
    out = open(Path(temp) / "ray-start.out", "wb")
    head = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            check_reachable(address, timeout=1)
            break
        except RayUnavailableError:
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start failed:\n{(Path(temp) / 'ray-start.out').read_text(errors='replace')}")
            time.sleep(0.5)
    yield address
    # Every Ray process of this node is in ray start's session: stop them all.
    os.killpg(head.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while group_alive(head.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)
    head.wait(10)
    out.close()


@pytest.fixture
def ray_client(ray_cluster):
    """This process connected to the cluster (so launchers do not own the connection)."""
    import ray

    use_ray_token_if_any()  # ray start --head turned on token authentication
    ray.init(address=ray_cluster, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def fake_launcher(address: str, tmp_path: Path, **kw) -> RayLauncher:
    return RayLauncher("fake-model", address=address, device="cpu", log_dir=tmp_path, base_cmd=FAKE_ENGINE_CMD,
                       stop_grace=2.0, **kw)  # fmt: skip


@pytest.mark.engine
async def test_a_launcher_that_connected_disconnects_and_stops_its_engines(ray_cluster, tmp_path):
    import ray

    assert not ray.is_initialized()
    launcher = fake_launcher(ray_cluster, tmp_path)
    assert ray.is_initialized() and launcher.capacity() == 2  # 2 CPUs, 1 per stand-in engine
    [e] = launcher.launch(1, initial_phase="decode")
    await launcher.wait_healthy([e], 60)
    pid = e.node_pid
    assert pid is not None and group_alive(pid) and e.pid is None
    await launcher.close()
    assert not group_alive(pid) and e.exit_code() is not None
    assert not ray.is_initialized()  # it started the connection, so it ended it


@pytest.mark.engine
async def test_an_engine_whose_actor_dies_counts_as_exited_and_leaves_no_process(ray_client, tmp_path):
    launcher = fake_launcher(ray_client.get_runtime_context().gcs_address, tmp_path)
    async with Coordinator("fake-model", engines=2, launcher=launcher, replace_failed=False,
                           policy="round-robin") as coord:  # fmt: skip
        a, b = (rec.launched for rec in coord.engines.values())
        assert a.placement != b.placement  # each engine claimed its own core
        assert (await coord.generate("x y", max_tokens=3))["usage"]["completion_tokens"] == 3
        pid = b.node_pid
        ray_client.kill(b.actor)  # what a lost node or a crashed actor looks like
        t0 = time.monotonic()
        slowest = 0.0
        while True:
            t = time.perf_counter()
            code = b.exit_code()
            slowest = max(slowest, time.perf_counter() - t)
            if code is not None or time.monotonic() - t0 > 20:
                break
            await asyncio.sleep(0.05)
        assert code == ACTOR_LOST
        assert slowest < 0.05  # polled on the event loop: never waits on the actor
        assert "Ray actor is gone" in b.log_tail()
        deadline = time.monotonic() + 20
        while group_alive(pid) and time.monotonic() < deadline:  # PR_SET_PDEATHSIG
            await asyncio.sleep(0.1)
        assert not group_alive(pid)
        deadline = time.monotonic() + 15
        while not coord.engines[b.id].failed and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert "exited" in (coord.engines[b.id].failed or "")
        for i in range(4):  # the other engine takes everything
            assert (await coord.generate(f"p{i}", max_tokens=2))["usage"]["completion_tokens"] == 2
        pid_a = a.node_pid
    assert not group_alive(pid_a)
    with pytest.raises(ray_client.exceptions.RayActorError):
        ray_client.get(a.actor.info.remote(), timeout=10)


@pytest.mark.engine
async def test_no_room_and_a_failed_start_are_clear_errors(ray_client, tmp_path):
    address = ray_client.get_runtime_context().gcs_address
    big = fake_launcher(address, tmp_path, cpus_per_rank=8)
    [e] = big.launch(1, initial_phase="decode")
    with pytest.raises(EngineStartError, match=r"no node with room for 8 CPU\(s\)"):
        await big.wait_healthy([e], 3)
    await big.close()
    broken = RayLauncher("fake-model", address=address, device="cpu", log_dir=tmp_path,
                         base_cmd=[sys.executable, "-c", "import sys; print('no such model'); sys.exit(3)"])  # fmt: skip
    [e] = broken.launch(1, initial_phase="decode")
    with pytest.raises(EngineStartError, match=r"(?s)exited with code 3.*no such model"):
        await broken.wait_healthy([e], 60)
    await broken.close()


@pytest.mark.engine
async def test_vllm_engines_on_ray_serve_directly_and_through_the_coordinator(ray_client, tiny_model, tmp_path):
    address = ray_client.get_runtime_context().gcs_address
    launcher = RayLauncher(str(tiny_model), ENGINE_ARGS, address=address, device="cpu", log_dir=tmp_path,
                           extra_env={"VLLM_CPU_KVCACHE_SPACE": "1"}, stop_grace=5.0)  # fmt: skip
    node_ip = ray_client.util.get_node_ip_address()
    # Two engines start side by side, one core each: one launched by hand in
    # the stock (mixed) phase for direct requests, one by the coordinator.
    [direct] = launcher.launch(1, initial_phase="mixed")
    async with Coordinator(str(tiny_model), engines=1, launcher=launcher, replace_failed=False,
                           startup_timeout=START_TIMEOUT_S) as coord:  # fmt: skip
        await launcher.wait_healthy([direct], START_TIMEOUT_S)
        [rec] = coord.engines.values()
        steered = rec.launched
        assert {direct.placement, steered.placement} == {"cores 0", "cores 1"}
        for e in (direct, steered):  # advertised by the node, reached over the network
            assert urlparse(e.url).hostname == node_ip and e.url.startswith("http://")
        # Directly, over HTTP to the engine's advertised URL.
        async with httpx.AsyncClient(timeout=120) as http:
            r = await http.post(direct.url + "/v1/completions",
                                json={"model": coord.served_model, "prompt": "Hello", "max_tokens": 5})  # fmt: skip
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5, (r.text, direct.log_tail(80))
        assert f"ecoserve on {node_ip}" in direct.log_tail(10_000)  # fetched through the actor
        # Stopped by the launcher: the process group is gone, the actor is dead.
        pid = direct.node_pid
        assert group_alive(pid)
        await launcher.stop([direct])
        assert not group_alive(pid) and direct.exit_code() is not None
        with pytest.raises(ray_client.exceptions.RayActorError):
            ray_client.get(direct.actor.info.remote(), timeout=10)
        # Through the coordinator. The engine's ZeroMQ status socket is
        # advertised on the node IP and reachable with the coordinator's
        # secret (the launcher passed it to the engine).
        async with httpx.AsyncClient(timeout=30) as http:
            addresses = (await http.get(steered.url + "/ecoserve/status")).json()["addresses"]
        assert urlparse(addresses["status"]).hostname == node_ip
        pushes = StatusSubscriber(addresses["status"], lambda st: None)
        listening = asyncio.create_task(pushes.run())
        replies = await asyncio.gather(*(coord.generate(f"prompt {i}", max_tokens=6) for i in range(4)))
        assert [x["usage"]["completion_tokens"] for x in replies] == [6] * 4
        await asyncio.sleep(0.5)
        listening.cancel()
        assert pushes.received > 0 and pushes.malformed == 0
        [inst] = coord.status()["instances"]
        assert inst["routed_total"] == 4 and inst["commanded_phase"] is not None
        pid = steered.node_pid
        assert group_alive(pid)
    # Coordinator.stop -> launcher.close.
    assert not group_alive(pid) and steered.exit_code() is not None
    with pytest.raises(ray_client.exceptions.RayActorError):
        ray_client.get(steered.actor.info.remote(), timeout=10)
