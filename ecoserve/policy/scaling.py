"""Carrying out the mitosis planner's decisions, written once for both drivers.

The live coordinator and the simulator each give a ``ScalingPort``: how to
launch an engine, drain one, and record a split or merge. ``carry_out`` asks
the planner and applies its answer until it asks nothing more: splits and
merges happen at once (they move handles only), while a scale action ends the
round, since the planner's cooldown starts with it and a launch takes time.

A launched engine joins the macro instance ``join_macro`` names for the layout
*when it joins*, not when it was asked for: drains and merges may have changed
the layout while it loaded.
"""

from __future__ import annotations

from typing import Protocol

from ecoserve.policy.actions import Action
from ecoserve.policy.mitosis import Merge, MitosisConfig, MitosisPlanner, ScaleAction, ScaleIn, ScaleOut, Split, grow_target
from ecoserve.policy.router import Router

# Splits and merges in a row before the planner is judged broken; a layout
# needs a handful at most.
MAX_CHANGES_PER_ROUND = 64


class ScalingPort(Protocol):
    def launch(self, action: ScaleOut, now: float) -> None:
        """Start one engine; once it serves, add it at ``join_macro``."""

    def drain(self, action: ScaleIn, now: float) -> None:
        """Route nothing new to the instance; stop it once it has drained."""

    def restructured(self, action: Split | Merge, actions: list[Action], before: list[tuple[str, int]],
                     now: float) -> None:  # fmt: skip
        """A split or merge was made: carry out the router's ``actions``.
        ``before``: each macro instance's name and size before it."""


def carry_out(planner: MitosisPlanner, router: Router, now: float, *, launching: int,
              port: ScalingPort) -> list[ScaleAction]:  # fmt: skip
    """Ask the planner until it is satisfied; returns what was done."""
    if not router.has_macros:
        raise ValueError("mitosis scaling needs a router with macro instances")
    done: list[ScaleAction] = []
    for _ in range(MAX_CHANGES_PER_ROUND):
        asked = planner.plan(router, now, launching=launching)  # type: ignore[arg-type]
        if not asked:
            return done
        for a in asked:
            done.append(a)
            if isinstance(a, ScaleOut):
                port.launch(a, now)
            elif isinstance(a, ScaleIn):
                port.drain(a, now)
            else:
                before = [(name, len(g)) for name, g in zip(router.group_names(), router.layout())]
                actions = router.split(a.macro, now) if isinstance(a, Split) else router.merge(a.into, a.other, now)
                port.restructured(a, actions, before, now)
        if any(isinstance(a, (ScaleOut, ScaleIn)) for a in asked):
            return done
    raise RuntimeError(f"the mitosis planner asked for over {MAX_CHANGES_PER_ROUND} layout changes at once")


def join_macro(router: Router, cfg: MitosisConfig) -> int:
    """Where a launched engine joins, for the layout as it is now."""
    return grow_target(router.layout(), cfg)
