"""Mitosis autoscaling live: the policy's planner on a periodic tick, carried
out on real engines by ``policy.scaling.carry_out`` (the function the simulator
uses too) through this port:

- ``launch``: a new engine is started beside the loop and joins, once it
  serves, the macro instance ``join_macro`` names for the layout *then*;
- ``drain``: the engine takes nothing new and is stopped once empty;
- ``restructured``: a split or merge (handles move, requests stay).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ecoserve.live.fleet import Fleet
from ecoserve.policy import Action, Merge, MitosisPlanner, Router, ScaleIn, ScaleOut, Split, carry_out, join_macro

log = logging.getLogger("ecoserve.coordinator")

AUTOSCALE_S = 1.0  # how often the mitosis planner is asked


class LiveScaling:
    def __init__(self, planner: MitosisPlanner, router: Router, fleet: Fleet,
                 apply: Callable[[list[Action]], None]) -> None:  # fmt: skip
        self.planner = planner
        self.router = router
        self.fleet = fleet
        self.apply = apply

    async def run(self) -> None:
        while True:
            await asyncio.sleep(AUTOSCALE_S)
            self.round(time.monotonic())

    def round(self, now: float) -> None:
        carry_out(self.planner, self.router, now, launching=self.fleet.launching, port=self)

    # -- the ScalingPort ---------------------------------------------------------------
    def launch(self, action: ScaleOut, now: float) -> None:
        self.fleet.spawn(self._scale_out(), "scale-out")

    async def _scale_out(self) -> None:
        try:
            await self.fleet.add_engine(lambda: join_macro(self.router, self.planner.cfg))
        except Exception as e:
            log.error("scale-out failed: %s", e)
            self.fleet.event("launch-failed", None, str(e))

    def drain(self, action: ScaleIn, now: float) -> None:
        self.fleet.spawn(self.fleet.remove_engine(action.instance_id), "scale-in")

    def restructured(self, action: Split | Merge, actions: list[Action], before: list[tuple[str, int]],
                     now: float) -> None:  # fmt: skip
        self.apply(actions)
        names = [name for name, _ in before]
        if isinstance(action, Split):
            self.fleet.event("split", names[action.macro])
        else:
            self.fleet.event("merged", names[action.other])
