"""Progress of the CLI's long jobs, through the commands: on stderr only (stdout
parses as before), plain lines off a terminal, and --quiet / -q silencing it
but never the results. Engines are stand-ins (ecoserve.testing.fake_engine)."""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time

import httpx
import pytest
from click.testing import CliRunner

from ecoserve.cli import main
from ecoserve.engine.launcher import LocalLauncher
from ecoserve.live import fleet as fleet_module
from ecoserve.testing.fake_engine import FakeEngineThread
from ecoserve.testing.ports import free_port
from tests.live.helpers import FAKE_ENGINE_CMD

SWEEP = ["simulate", "sweep", "--policies", "ecoserve,vllm", "--json", "--min-duration", "5", "--tolerance", "0.25",
         "--dataset", "alpaca", "--num-requests", "60", "--instances", "2"]  # fmt: skip


def invoke(args):
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


def test_simulate_sweep_progress_on_stderr_results_on_stdout():
    r = invoke(SWEEP)
    out = json.loads(r.stdout)  # stdout is the JSON and nothing else
    assert [x["policy"] for x in out["results"]] == ["ecoserve", "vllm"]
    err = r.stderr.splitlines()
    assert err[0].startswith("simulating: 0/2 policies, ecoserve: starting")
    assert err[-1].startswith("simulating: 2/2 policies, vllm: ") and " runs [" in err[-1]
    assert "\r" not in r.stderr  # not a terminal: plain lines
    quiet = invoke([*SWEEP, "-q"])
    assert quiet.stderr == ""
    q = json.loads(quiet.stdout)
    assert [x["goodput_rps"] for x in q["results"]] == [x["goodput_rps"] for x in out["results"]]


def test_simulate_run_that_is_quick_shows_no_progress():
    r = invoke(["simulate", "run", "--rate", "3", "--num-requests", "60", "--instances", "2", "--json"])
    assert r.stderr == "" and json.loads(r.stdout)["finished"] == 60


def test_simulate_run_has_quiet_options():
    for flag in ("-q", "--quiet", "--no-progress"):
        r = invoke(["simulate", "run", "--rate", "3", "--num-requests", "60", "--instances", "2", flag])
        assert "SLO attainment" in r.stdout


# ---- bench, against a stand-in server ------------------------------------------------------


@pytest.fixture(scope="module")
def fake():
    bg = FakeEngineThread(token_interval=0.002, prefill_delay=0.05)
    yield bg
    bg.close()


def bench_args(fake, tiny_model, *rest):
    return ["bench", *rest, "--base-url", fake.url, "--tokenizer", str(tiny_model), "--prompt-form", "ids",
            "--dataset", "alpaca", "--num-requests", "8", "--max-context", "300", "--json"]  # fmt: skip


def test_bench_run_progress_counts_requests_finished_and_sent(fake, tiny_model):
    r = invoke(bench_args(fake, tiny_model, "run", "--rate", "40", "--label", "fake"))
    assert json.loads(r.stdout)["finished"] == 8
    err = r.stderr.splitlines()
    assert err[0].startswith("fake @ 40 req/s: 0/8 requests, sent 1 [")
    assert err[-1].startswith("fake @ 40 req/s: 8/8 requests, sent 8 [")
    quiet = invoke(bench_args(fake, tiny_model, "run", "--rate", "40", "-q"))
    assert quiet.stderr == "" and json.loads(quiet.stdout)["finished"] == 8


def test_bench_sweep_progress_names_each_rate(fake, tiny_model):
    r = invoke(bench_args(fake, tiny_model, "sweep", "--rates", "20,40", "--label", "fake"))
    assert [p["rate"] for p in json.loads(r.stdout)["results"][0]["points"]] == [20.0, 40.0]
    err = r.stderr.splitlines()
    assert any(x.startswith("[1/2] fake @ 20 req/s: 8/8 requests") for x in err), err
    assert err[-1].startswith("[2/2] fake @ 40 req/s: 8/8 requests"), err
    assert invoke(bench_args(fake, tiny_model, "sweep", "--rates", "20", "--quiet")).stderr == ""


# ---- serve: engines healthy / total while they start --------------------------------------


def _stop_when_healthy(url: str, timeout: float = 60.0) -> threading.Thread:
    """SIGTERM to this process once ``url`` serves: serve's own handler (installed
    before its engines start) shuts it down. Never sent if it does not come up."""

    def run() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("quiet", [False, True])
def test_serve_shows_engines_healthy_while_they_start(tmp_path, monkeypatch, quiet):
    # The launcher serve builds starts stand-in engine processes instead of vLLM.
    monkeypatch.setattr(fleet_module, "LocalLauncher",
                        functools.partial(LocalLauncher, base_cmd=FAKE_ENGINE_CMD, stop_grace=2.0))  # fmt: skip
    port = free_port()
    stopper = _stop_when_healthy(f"http://127.0.0.1:{port}")
    args = ["serve", "--model", "fake-model", "--engines", "2", "--device", "cpu", "--port", str(port),
            "--log-dir", str(tmp_path), "--startup-timeout", "60", "--shutdown-grace", "1", "--policy", "round-robin",
            "--log-level", "warning", *(["--quiet"] if quiet else [])]  # fmt: skip
    r = CliRunner().invoke(main, args)
    stopper.join(5)
    assert r.exit_code == 0, r.output
    assert "ecoserve: ready" in r.stdout and "healthy" not in r.stdout  # progress never on stdout
    progress = [x for x in r.stderr.splitlines() if x.startswith("engines: ")]
    if quiet:
        assert progress == []
        return
    assert progress[0].startswith("engines: 0/2 healthy, waiting for engine-0, engine-1 [")
    assert progress[-1].startswith("engines: 2/2 healthy [")
    assert "\r" not in r.stderr


def test_profile_progress_counts_the_points_measured(fake, tiny_model, tmp_path):
    args = ["profile", "--engine-url", fake.url, "--tokenizer", str(tiny_model), "--out", str(tmp_path / "p.json"),
            "--source", "client", "--kv-capacity-tokens", "16384", "--prefill-lengths", "16,64", "--repeats", "1",
            "--batch-sizes", "1,2", "--context-lengths", "128"]  # fmt: skip
    r = invoke(args)
    assert r.stdout.startswith("wrote ") and (tmp_path / "p.json").is_file()
    err = r.stderr.splitlines()
    assert err[0].startswith("profiling: 0/4 points, warm-up [")
    assert err[-1].startswith("profiling: 4/4 points, decode b=2 ctx=128 [")
    quiet = invoke([*args, "-q"])
    assert quiet.stderr == "" and quiet.stdout.startswith("wrote ")
