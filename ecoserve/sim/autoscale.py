"""Mitosis autoscaling in the simulator: the policy's ``MitosisPlanner`` on a
periodic tick, carried out on simulated engines.

The autoscaler decides nothing itself. Every ``interval_s`` it reports the
engines' tokens so far (``RouterDriver.flush``, so the planner sees fresh
decode slack) and hands the planner to ``policy.scaling.carry_out``, the same
function the live coordinator uses, with this port:

- ``launch``: a new engine joins the router ``launch_delay_s`` later (model
  load and engine start-up), at ``join_macro`` for the layout at join time.
  Until it joins, the planner is told it is launching and asks for no more.
- ``drain``: ``Router.remove_instance``: the instance takes nothing new and
  finishes what it holds; on ``Drained`` its engine leaves. Nothing is killed.
- ``restructured``: a split or merge (handles move, requests and KV stay).

It records every action (``events``) and the fleet after each change
(``samples``); ``timeline()`` bins the run's requests into windows next to
them: instance count, layout, per-window SLO attainment, TTFT and TPOT.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from ecoserve.metrics import RequestRecord, percentile
from ecoserve.policy import InstanceState, Merge, MitosisPlanner, ScaleIn, ScaleOut, Split, carry_out, join_macro
from ecoserve.policy.actions import Action
from ecoserve.policy.prefix_index import PrefixIndex
from ecoserve.sim.core import RouterDriver, Simulator
from ecoserve.sim.engine import SimEngine, SimRequest


class SimAutoscaler:
    def __init__(
        self,
        sim: Simulator,
        driver: RouterDriver,
        planner: MitosisPlanner,
        new_engine: Callable[[str], SimEngine],
        *,
        launch_delay_s: float,
        interval_s: float = 1.0,
        prefix_of: Callable[[SimEngine], PrefixIndex | None] | None = None,
    ) -> None:
        """``prefix_of(engine)``: the policy's prefix index for an engine that joins."""
        if launch_delay_s < 0 or interval_s <= 0:
            raise ValueError("need launch_delay_s >= 0 and interval_s > 0")
        self.sim = sim
        self.driver = driver
        self.router = driver.router
        self.planner = planner
        self.new_engine = new_engine
        self.prefix_of = prefix_of
        self.launch_delay_s = launch_delay_s
        self.interval_s = interval_s
        self.launching = 0
        self._names = len(driver.engines)
        self.events: list[dict] = []
        self.samples: list[dict] = []
        self.asked_at: dict[str, float] = {}  # engine id -> when its launch was asked for
        self.drained_at: dict[str, float] = {}  # engine id -> when it left, empty
        self.retired: list[SimEngine] = []
        driver.on_first_token = self._first_token
        driver.on_drained = self._drained

    def start(self, now: float = 0.0) -> None:
        for e in self.driver.engines:
            self.asked_at.setdefault(e.id, now)
        self._sample(now)
        self.sim.at(now + self.interval_s, self._tick)

    # -- the periodic tick -------------------------------------------------------------

    def _first_token(self, r: SimRequest, now: float) -> None:
        self.planner.observe_ttft(now - r.arrival, now)

    def _tick(self, now: float, _arg: object) -> None:
        self.driver.flush(now)
        self._consult(now)
        if self.sim.arrivals_left or self.driver.unfinished():
            self.sim.at(now + self.interval_s, self._tick)

    def _consult(self, now: float) -> None:
        carry_out(self.planner, self.router, now, launching=self.launching, port=self)

    # -- the ScalingPort ---------------------------------------------------------------

    def launch(self, action: ScaleOut, now: float) -> None:
        eid = f"i{self._names}"
        self._names += 1
        self.launching += 1
        self.asked_at[eid] = now
        self._event(now, "scale_out", instance=eid, macro=action.macro)
        self.sim.at(now + self.launch_delay_s, self._join, eid)

    def _join(self, now: float, eid: object) -> None:
        assert isinstance(eid, str)
        self.launching -= 1
        engine = self.new_engine(eid)
        self.driver.flush(now)
        self.driver.add_engine(engine)
        macro = join_macro(self.router, self.planner.cfg)
        inst = InstanceState(engine.id, engine.capacity, max_requests=engine.max_num_seqs,
                             prefix=self.prefix_of(engine) if self.prefix_of is not None else None)  # fmt: skip
        self.driver.apply(self.router.add_instance(inst, now, macro=macro), now)
        self._event(now, "join", instance=eid, macro=macro)
        self._consult(now)  # a macro instance past N_u splits at once

    def drain(self, action: ScaleIn, now: float) -> None:
        iid = action.instance_id
        self._event(now, "scale_in", instance=iid, macro=self.router.group_of(iid))
        self.driver.apply(self.router.remove_instance(iid, now), now)
        self._sample(now)  # now draining (or gone, if it was idle)

    def _drained(self, instance_id: str, now: float) -> None:
        self.retired.append(self.driver.remove_engine(instance_id))
        self.drained_at[instance_id] = now
        self._event(now, "drained", instance=instance_id)

    def restructured(self, action: Split | Merge, actions: list[Action], before: list[tuple[str, int]],
                     now: float) -> None:  # fmt: skip
        self.driver.apply(actions, now)
        sizes = [n for _, n in before]
        if isinstance(action, Split):
            self._event(now, "split", macro=action.macro, before=sizes)
        else:
            self._event(now, "merge", macro=action.into, other=action.other, before=sizes)

    # -- records -----------------------------------------------------------------------

    def _sizes(self) -> list[int]:
        return [len(g) for g in self.router.layout()]

    def _event(self, now: float, action: str, **detail) -> None:
        self.events.append({"t": round(now, 6), "action": action, **detail, "layout": self._sizes()})
        self._sample(now)

    def _sample(self, now: float) -> None:
        sizes = self._sizes()
        draining = sum(1 for i in self.router.instances() if i.draining)
        self.samples.append({"t": round(now, 6), "instances": sum(sizes), "launching": self.launching,
                             "draining": draining, "layout": sizes})

    def instance_seconds(self, end: float) -> float:
        """Engine-seconds held from launch to leaving (loading ones hold GPUs too)."""
        return sum(self.drained_at.get(eid, end) - t for eid, t in self.asked_at.items() if t <= end)

    def summary(self, end: float) -> dict:
        counts = {k: sum(1 for e in self.events if e["action"] == k)
                  for k in ("scale_out", "join", "scale_in", "drained", "split", "merge")}
        active = [s["instances"] for s in self.samples]
        return {
            "actions": counts,
            "instances": {"start": active[0], "end": active[-1], "min": min(active), "max": max(active)},
            "layout_end": self.samples[-1]["layout"],
            "instance_seconds": round(self.instance_seconds(end), 3),
        }

    def fleet_at(self, t: float) -> dict:
        """The last sample at or before ``t``."""
        last = self.samples[0]
        for s in self.samples:
            if s["t"] > t:
                break
            last = s
        return last

    def timeline(self, records: Sequence[RequestRecord], window_s: float, slo_ttft: float, slo_tpot: float,
                 end: float) -> dict:
        """Per-window series: the fleet at the window's end (and the most
        instances during it), and the requests that arrived in the window:
        count, SLO attainment, TTFT and TPOT; ``finished_attainment`` is over the
        requests that finished in it instead."""
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        n = max(1, math.ceil(end / window_s))
        arrived: list[list[RequestRecord]] = [[] for _ in range(n)]
        finished: list[list[RequestRecord]] = [[] for _ in range(n)]
        for r in records:
            arrived[min(n - 1, int(r.arrival // window_s))].append(r)
            if r.finish is not None:
                finished[min(n - 1, int(r.finish // window_s))].append(r)
        windows = []
        for k in range(n):
            t0, t1 = k * window_s, (k + 1) * window_s
            fleet = self.fleet_at(t1)
            during = [s["instances"] for s in self.samples if t0 < s["t"] <= t1] + [self.fleet_at(t0)["instances"]]
            a, f = arrived[k], finished[k]
            ttfts = [r.ttft for r in a if r.ttft is not None]
            tpots = [r.tpot for r in a if r.tpot is not None]
            windows.append({
                "t0": t0, "t1": t1,
                "instances": fleet["instances"], "instances_max": max(during),
                "launching": fleet["launching"], "draining": fleet["draining"], "layout": fleet["layout"],
                "arrivals": len(a),
                "attainment": _share(a, slo_ttft, slo_tpot),
                "finished": len(f),
                "finished_attainment": _share(f, slo_ttft, slo_tpot),
                "ttft_mean": _mean(ttfts), "ttft_p90": percentile(ttfts, 90),
                "tpot_mean": _mean(tpots), "tpot_p90": percentile(tpots, 90),
            })
        return {"window_s": window_s, "windows": windows, "events": self.events, "samples": self.samples}


def _share(recs: Sequence[RequestRecord], slo_ttft: float, slo_tpot: float) -> float:
    return sum(1 for r in recs if r.meets(slo_ttft, slo_tpot)) / len(recs) if recs else math.nan


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan
