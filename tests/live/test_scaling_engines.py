"""Live scaling and failure recovery on real vLLM CPU engines (tiny model).

Both scenarios run ``ecoserve serve`` as a user would, under a steady
open-loop load of streaming completions with exact output lengths, and
account for every request sent (bench/live_scenarios.py, which also prints
the figures for reports):

- chaos: ``kill -9`` of one of two engines mid-load. Nothing may be lost:
  every request completes, or (a stream already under way on the dead
  engine) ends with a clear error; the engine is replaced.

- ramp: the autoscaler grows one engine to three under load (N_u = 2, so the
  macro instance splits), then shrinks back to one with a merge once the
  load stops; every request completes with its exact token count.
"""

from __future__ import annotations

import asyncio

import pytest

from bench.live_scenarios import chaos, ramp

pytestmark = pytest.mark.engine


def test_kill_9_an_engine_under_load_loses_nothing(tiny_model, tmp_path):
    r = asyncio.run(chaos(str(tiny_model), tmp_path, rate=4.0, before_s=10.0, after_s=8.0))
    detail = f"report: { {k: v for k, v in r.items() if k != 'serve_output_tail'} }\n{r['serve_output_tail']}"
    assert r["lost"] == 0, detail
    assert r["completed"] + r["failed"] == r["sent"] and r["sent"] >= 60, detail
    # Only streams already under way on the killed engine may end (with an error).
    assert r["failed"] <= 8 and all("engine-1" in f["detail"] for f in r["failures"]), detail
    assert r["detect_s"] is not None and r["detect_s"] < 10, detail
    assert r["recover_s"] is not None, detail
    assert sorted(r["engines_after"]) == ["engine-0", "engine-2"], detail
    assert ("replaced", "engine-1", "by engine-2") in [tuple(e) for e in r["events"]], detail
    assert r["exit_code"] == 0, detail


def test_autoscaler_grows_1_to_3_with_a_split_then_shrinks_with_a_merge(tiny_model, tmp_path):
    r = asyncio.run(ramp(str(tiny_model), tmp_path))
    detail = f"report: { {k: v for k, v in r.items() if k not in ('timeline', 'serve_output_tail')} }\n" + str(
        r.get("serve_output_tail", "")
    )
    assert r["lost"] == 0 and r["failed"] == 0 and r["completed"] == r["sent"] >= 20, detail
    kinds = [e[0] for e in r["events"]]
    assert r["max_engines_seen"] == 3 and kinds.count("added") == 2, detail
    assert "split" in kinds and "merged" in kinds and kinds.index("split") < kinds.index("merged"), detail
    assert kinds.count("removed") == 2 and len(r["final_layout"]) == 1 and len(r["final_layout"][0]) == 1, detail
    assert "failed" not in kinds and "error" not in kinds, detail  # a drained engine's stop is not a failure
    assert any(len(s["layout"]) == 2 for s in r["timeline"]), detail  # two macro instances at the peak
    assert r["exit_code"] == 0, detail
