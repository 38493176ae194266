"""`ecoserve bench` and `ecoserve profile` against one real vLLM CPU engine
(tiny model, EcoServe plugin, one core), run exactly as a user would: every
request comes back with exactly the tokens asked for, the JSON has the
`simulate run` shape, and the measured profile loads into the simulator and
the policy's prefill-time predictor."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vllm_plugin import SCHEDULER_CLS

pytestmark = pytest.mark.engine
START_TIMEOUT_S = 420  # one core of a shared 2-core machine


@pytest.fixture(scope="module")
def engine(tiny_model, tmp_path_factory, start_engine):
    with start_engine(tiny_model, "--max-model-len", "512", "--enforce-eager", "--dtype", "bfloat16",
                      "--scheduler-cls", SCHEDULER_CLS,
                      core=0, log_dir=tmp_path_factory.mktemp("engine")) as server:  # fmt: skip
        server.wait_ready(START_TIMEOUT_S)
        yield server.url


def _ecoserve(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecoserve.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


def test_bench_run_gets_every_request_with_exact_lengths(engine, tiny_model, tmp_path):
    records = tmp_path / "records.csv"
    r = _ecoserve("bench", "run", "--base-url", engine, "--model", str(tiny_model), "--dataset", "sharegpt",
                  "--rate", "8", "--num-requests", "24", "--slo-ttft", "2", "--slo-tpot", "0.2", "--seed", "3",
                  "--records", str(records), "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["num_requests"] == 24 and out["finished"] == 24
    assert out["stats"]["failed"] == 0 and out["stats"]["errors"] == {}
    assert out["stats"]["length_mismatches"] == 0  # usage: prompt and completion tokens exactly as asked
    assert out["workload"]["truncated_to_context"] > 0  # sharegpt's long tail exceeds the 512-token context
    assert "512" in out["workload"]["note"]
    assert all(out["ttft"][k] > 0 for k in ("p50", "p90", "p99"))
    # The tiny model outruns the API server, which then streams several tokens
    # per chunk (some requests' whole output in one): TPOT can be 0 for many.
    assert out["tpot"]["max"] > 0
    assert 0 <= out["attainment"] <= 1
    assert len(records.read_text().splitlines()) == 25


def test_profile_from_step_records_loads_everywhere(engine, tiny_model, tmp_path):
    path = tmp_path / "profile.json"
    r = _ecoserve("profile", "--engine-url", engine, "--model", str(tiny_model), "--out", str(path), "--quick")
    assert r.returncode == 0, r.stderr[-3000:]
    raw = json.loads(path.read_text())
    assert raw["format"] == "ecoserve-profile/v1" and raw["source"] == "steps"
    assert raw["max_context"] == 512 and raw["kv_capacity_tokens"] > 0

    from ecoserve.policy import PrefillTimePredictor
    from ecoserve.sim.engine_model import ProfileModel
    from ecoserve.workload import EngineProfile, load_profile

    prof = EngineProfile.load(path)
    assert prof.meta["source"] == "steps" and "ttft_s" in prof.meta["overheads"]
    pts = load_profile(path)
    assert pts[0][0] == 16 and pts[-1][0] == 512 - 24 - 1  # the context less the decode tokens
    longest, shortest = pts[-1][1], pts[0][1]
    assert longest > shortest > 0  # a longer prompt costs more
    pred = PrefillTimePredictor(points=pts)
    assert pred.predict(pts[-1][0]) == pytest.approx(longest)
    model = ProfileModel.load(path)
    # The simulator reads the engine's own decode times (not compared with each other: on the
    # tiny model a step is a few ms, within this shared machine's noise).
    assert model.decode_step(16, 16 * 100) == pytest.approx(prof.decode_time(16, 100) + model.step_gap)
    assert model.decode_step(1, 100) > 0
    sim = _ecoserve("simulate", "run", "--model", str(path), "--policy", "vllm", "--instances", "1",
                    "--rate", "2", "--num-requests", "20", "--json")  # fmt: skip
    assert sim.returncode == 0, sim.stderr[-2000:]
    assert json.loads(sim.stdout)["finished"] == 20
