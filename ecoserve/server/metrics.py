"""Prometheus metrics of the front door (``GET /metrics``).

Counters and histograms are updated once per request (never per token, to
keep the relay cheap); per-engine gauges are read from the coordinator's
status when scraped, so they are exact at that moment and cost nothing
in between. A registry per app: several servers in one process do not clash.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ecoserve.live import Coordinator, Observer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0)
_PHASES = ("prefill", "decode", "mixed", "chunked")


class Metrics(Observer):
    def __init__(self, coord: Coordinator) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ecoserve_requests", "Requests finished, by outcome", ["outcome"], registry=r)
        self.ttft = Histogram("ecoserve_ttft_seconds", "Time to first token (arrival to first token)",
                              buckets=_TTFT_BUCKETS, registry=r)  # fmt: skip
        self.tpot = Histogram("ecoserve_tpot_seconds", "Mean time per output token after the first, per request",
                              buckets=_TPOT_BUCKETS, registry=r)  # fmt: skip
        self.routed = Counter("ecoserve_routing_decisions", "Requests routed, by reason and engine",
                              ["reason", "engine"], registry=r)  # fmt: skip
        self.queued = Counter("ecoserve_queued_requests", "Requests that had to wait, by the constraint that failed",
                              ["reason"], registry=r)  # fmt: skip
        r.register(_StateCollector(coord))

    def on_routed(self, instance_id: str, reason: str) -> None:
        self.routed.labels(reason, instance_id).inc()

    def on_queued(self, reason: str) -> None:
        self.queued.labels(reason).inc()

    def on_done(self, outcome: str, ttft: float | None, tpot: float | None) -> None:
        self.requests.labels(outcome).inc()
        if ttft is not None:
            self.ttft.observe(ttft)
        if tpot is not None:
            self.tpot.observe(tpot)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(self, coord: Coordinator) -> None:
        self._coord = coord

    def collect(self) -> Iterator[Metric]:
        st = self._coord.status()
        yield GaugeMetricFamily("ecoserve_pending_requests", "Requests waiting to be routed", value=st["pending"])
        yield GaugeMetricFamily(
            "ecoserve_in_flight_requests", "Requests admitted and not finished", value=st["in_flight"]
        )
        yield GaugeMetricFamily("ecoserve_prefill_predictor_correction_ratio",
                                "Observed/predicted prefill time ratio applied to predictions",
                                value=st["predictor"]["correction"])  # fmt: skip
        # The targets as series, so a dashboard draws them beside the latency quantiles.
        yield GaugeMetricFamily("ecoserve_slo_ttft_seconds", "TTFT SLO the policy routes for", value=st["slo"]["ttft"])
        yield GaugeMetricFamily("ecoserve_slo_tpot_seconds", "TPOT SLO the policy routes for", value=st["slo"]["tpot"])
        phase = GaugeMetricFamily("ecoserve_engine_phase", "1 for the phase the policy holds the engine in",
                                  labels=["engine", "phase"])  # fmt: skip
        running = GaugeMetricFamily(
            "ecoserve_engine_running_requests", "Requests with a first token, per engine", labels=["engine"]
        )
        waiting = GaugeMetricFamily("ecoserve_engine_waiting_requests", "Requests routed, no first token yet", labels=["engine"])
        healthy = GaugeMetricFamily("ecoserve_engine_healthy", "1 while the engine serves", labels=["engine"])
        kv = GaugeMetricFamily(
            "ecoserve_engine_kv_reserved_tokens", "KV tokens reserved by the policy", labels=["engine"]
        )
        # The denominator of the reservation: a dashboard shows reserved / capacity.
        kv_cap = GaugeMetricFamily("ecoserve_engine_kv_capacity_tokens", "KV cache size in tokens", labels=["engine"])
        for inst in st["instances"]:
            eid = inst["id"]
            for p in _PHASES:
                phase.add_metric([eid, p], 1.0 if inst["phase"] == p else 0.0)
            running.add_metric([eid], inst["num_running"])
            waiting.add_metric([eid], inst["num_waiting"])
            healthy.add_metric([eid], 1.0 if inst["healthy"] else 0.0)
            kv.add_metric([eid], inst["kv_reserved_tokens"])
            kv_cap.add_metric([eid], inst["kv_capacity_tokens"])
        yield from (phase, running, waiting, healthy, kv, kv_cap)
