"""The ``/ecoserve/status`` document: the policy's view of every engine next to
the engine's own last report. A pure read of the fleet and the router.

Contract (docs/ARCHITECTURE.md): a list ``instances``, each with at least
``id``, ``url``, ``phase``, ``num_running``, ``num_waiting``, ``macro_instance``.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ecoserve.live.fleet import EngineRecord, Fleet
from ecoserve.policy import InstanceState, MitosisConfig, PrefillTimePredictor, Router, SLO

EVENTS_SHOWN = 50


def layout(router: Router) -> list[dict[str, Any]]:
    """Macro instances in routing order, with their engines (draining ones included)."""
    groups = router.layout(include_draining=True)
    return [{"name": name, "instances": ids} for name, ids in zip(router.group_names(), groups)]


def instance_status(rec: EngineRecord, inst: InstanceState | None, router: Router,
                    prefix_cache: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    obs = rec.observed
    macro = None
    if inst is not None:
        macro = "m0"
        with contextlib.suppress(KeyError):
            macro = router.group_of(rec.id)
    return {
        "id": rec.id,
        "url": rec.url,
        "phase": inst.phase.value if inst is not None else None,
        "num_running": inst.num_running if inst is not None else 0,
        "num_waiting": inst.num_waiting if inst is not None else 0,
        "macro_instance": macro,
        "healthy": rec.failed is None,
        "failed": rec.failed,
        "draining": rec.draining,
        "routed_total": rec.routed_total,
        "kv_capacity_tokens": rec.kv_capacity_tokens,
        "kv_reserved_tokens": inst.kv_reserved if inst is not None else 0,
        "commanded_phase": rec.acked_phase,
        # How its prefix cache is tracked (live/prefixes.py); None: not tracked.
        "prefix_cache": prefix_cache,
        "pid": rec.launched.pid if rec.launched is not None else None,
        "log": str(rec.launched.log_path) if rec.launched is not None and rec.launched.log_path else None,
        "engine": None if obs is None else {
            "phase": obs.phase, "activity": obs.activity, "num_waiting": obs.num_waiting,
            "num_prefilling": obs.num_prefilling, "num_decoding": obs.num_decoding,
            "kv_blocks_free": obs.kv_blocks_free, "kv_blocks_total": obs.kv_blocks_total,
            "block_size": obs.block_size, "step": obs.step, "time": obs.time,
        },
    }  # fmt: skip


def status_document(*, policy: str, slo: SLO, fleet: Fleet, router: Router, predictor: PrefillTimePredictor,
                    pending: int, in_flight: int, autoscale: MitosisConfig | None) -> dict[str, Any]:  # fmt: skip
    states = {i.id: i for i in router.instances()}
    return {
        "model": fleet.served_model,
        "policy": policy,
        "slo": {"ttft": slo.ttft, "tpot": slo.tpot},
        "pending": pending,
        "in_flight": in_flight,
        "predictor": {"correction": predictor.correction, "observations": predictor.observations},
        "instances": [instance_status(rec, states.get(rec.id), router, fleet.prefixes.summary(rec.id))
                      for rec in fleet.engines.values()],
        "layout": layout(router),
        "launcher": fleet.launcher.name if fleet.launcher is not None else None,
        "launching": fleet.launching,
        "autoscale": None if autoscale is None else {
            "min_engines": autoscale.min_instances, "max_engines": autoscale.max_instances,
            "macro_min": autoscale.macro_min, "macro_max": autoscale.macro_max,
            "ttft_window_s": autoscale.ttft_window_s, "cooldown_s": autoscale.cooldown_s,
            "scale_in_hold_s": autoscale.scale_in_hold_s,
        },
        "requeued_total": fleet.requeued_total,
        "replaced_total": fleet.replaced_total,
        "events": fleet.events[-EVENTS_SHOWN:],
    }  # fmt: skip
