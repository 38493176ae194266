"""examples/grafana/ecoserve-dashboard.json: importable, and it asks only for metrics that exist.

Every metric name in every query is either one our ``/metrics`` exposes (the real
``Metrics`` rendered over a coordinator on a stand-in engine) or a ``vllm:`` metric
the installed vLLM defines (its source read as text: no vLLM import), in the name
Prometheus stores it under (counters ``_total``, histograms ``_bucket``/``_sum``/``_count``).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from ecoserve.live.coordinator import Coordinator
from ecoserve.server.app import create_app
from tests.live.helpers import fakes

DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana" / "ecoserve-dashboard.json"
DS = "${DS_PROMETHEUS}"
# Labels Prometheus adds at scrape time: a matcher on them is always fine.
TARGET_LABELS = {"instance", "job"}

_IDENT = re.compile(r"(?<![\w.$:])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
_MATCHERS = re.compile(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, labels, variables or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    return {n for n in _IDENT.findall(expr) if n.lower() not in _KEYWORDS}


def matcher_labels(expr: str) -> dict[str, set[str]]:
    """{metric: label names its selectors match on}."""
    out: dict[str, set[str]] = {}
    for name, body in _MATCHERS.findall(re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)):
        out.setdefault(name, set()).update(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", body))
    return out


def queries(dash: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable's metric selector."""
    found = [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        m = re.fullmatch(r"label_values\((.+),\s*\w+\)", var["query"])
        assert m, f"variable {var['name']}: expected label_values(SELECTOR, LABEL), got {var['query']!r}"
        found.append((f"variable {var['name']}", m.group(1)))
    return found


def exposed(kind: str, name: str) -> set[str]:
    if kind == "counter":
        return {name if name.endswith("_total") else name + "_total"}
    if kind == "histogram":
        return {name + s for s in ("_bucket", "_sum", "_count")}
    return {name}


async def ecoserve_metrics() -> dict[str, set[str]]:
    """{series name: label names} our /metrics exposes, with every labelled family populated."""
    async with fakes(1) as (engine,):
        async with Coordinator(engine_urls=[engine.url]) as coord:
            metrics = create_app(coord).state.metrics
            await coord.generate("a b", max_tokens=2)
            metrics.on_queued("ttft")  # so the queued counter has a labelled sample
            out: dict[str, set[str]] = {}
            for fam in metrics.registry.collect():
                labels = {k for s in fam.samples for k in s.labels if k != "le"}
                for n in exposed(fam.type, fam.name):
                    out[n] = labels
            return out


def vllm_metrics() -> set[str]:
    """The series names the installed vLLM defines, read from its source files."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vLLM is not installed")
    defined = re.compile(r'(counter|gauge|histogram)(?:_cls)?\(\s*name=\s*["\'](vllm:[\w:]+)["\']', re.I)
    out: set[str] = set()
    for root in spec.submodule_search_locations:
        for f in Path(root).rglob("*.py"):
            text = f.read_text(errors="replace")
            if "vllm:" in text:
                for kind, name in defined.findall(text):
                    out |= exposed(kind.lower(), name)
    assert "vllm:num_requests_running" in out, "the vLLM metric definitions were not found where expected"
    return out


# ---------------------------------------------------------------------------------------


def test_the_name_extraction_catches_wrong_names():
    # The checks below are only as good as this: it must see every name, and nothing else.
    assert metric_names('histogram_quantile(0.9, sum by (le, instance) (rate(vllm:ttft_bucket{a=~"$x"}[$__rate_interval])))'
                        ) == {"vllm:ttft_bucket"}  # fmt: skip
    assert metric_names("sum by (engine) (a{phase=\"prefill\"}) + 2 * sum(b) / on(engine) c offset 5m") == {"a", "b", "c"}
    assert metric_names('rate(ecoserve_request_total{outcome="success"}[5m])') == {"ecoserve_request_total"}
    assert matcher_labels('x{instance=~"$c", engine_id="e"} / y{a!="}"}') == {"x": {"instance", "engine_id"}, "y": {"a"}}


def test_dashboard_has_grafanas_import_structure():
    dash = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    assert dash["__inputs"][0]["type"] == "datasource" and dash["__inputs"][0]["pluginId"] == "prometheus"
    required = {(r["type"], r["id"]) for r in dash["__requires"]}
    assert {("grafana", "grafana"), ("datasource", "prometheus")} <= required
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
    assert re.fullmatch(r"[\w-]{1,40}", dash["uid"]) and dash["title"] and dash["id"] is None
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, f"{p['title']} overlaps another panel"
        cells |= area
        if p["type"] == "row":
            continue
        assert ("panel", p["type"]) in required, f"{p['type']} missing from __requires"
        assert p["datasource"] == {"type": "prometheus", "uid": DS}, p["title"]
        assert p["targets"], p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
        assert all(t["datasource"]["uid"] == DS and t["expr"].strip() for t in p["targets"]), p["title"]
    assert all(v["datasource"]["uid"] == DS for v in dash["templating"]["list"])
    # No datasource left pointing at the exporter's own Prometheus.
    uids = re.findall(r'"uid":\s*"([^"]*)"', DASHBOARD.read_text())
    assert set(uids) == {DS, "-- Grafana --", dash["uid"]}, set(uids)


async def test_every_metric_the_dashboard_reads_exists():
    dash = json.loads(DASHBOARD.read_text())
    ours = await ecoserve_metrics()
    assert "ecoserve_slo_ttft_seconds" in ours and "ecoserve_requests_total" in ours
    used = [(where, name, expr) for where, expr in queries(dash) for name in metric_names(expr)]
    assert any(n.startswith("vllm:") for _, n, _ in used) and any(n.startswith("ecoserve_") for _, n, _ in used)
    unknown = [(where, n) for where, n, _ in used if not n.startswith("vllm:") and n not in ours]
    assert not unknown, f"not exposed by our /metrics: {unknown}"
    for where, expr in queries(dash):
        for name, labels in matcher_labels(expr).items():
            if name in ours:
                assert labels <= ours[name] | TARGET_LABELS, (where, name, labels - ours[name])
    vllm = vllm_metrics()
    unknown = [(where, n) for where, n, _ in used if n.startswith("vllm:") and n not in vllm]
    assert not unknown, f"not defined by the installed vLLM: {unknown}"
