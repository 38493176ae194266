"""A timeline as a PNG (matplotlib, headless): the dashboard's layout, for
papers, issues and terminals without a browser.

Rule: the same panels, colours and order as ``static/dashboard.js``: engine
lanes grouped by macro instance (steps by kind, the commanded phase as a thin
strip, routed requests as ticks, scaling events as dashed lines), then queue,
TTFT and TPOT against their SLOs, and KV use per engine; draining and failed
stretches shaded.
"""

from __future__ import annotations

from pathlib import Path

from ecoserve.timeline.document import Timeline

KIND = {"prefill": "#e8871e", "decode": "#3b7dd8", "mixed": "#8e5cc4"}
STATE = {"draining": "#c9c9c9", "failed": "#d62828"}
PHASE = {"prefill": "#e8871e", "decode": "#3b7dd8", "mixed": "#8e5cc4", "chunked": "#2a9d8f", "temporal": "#9aa0a6"}


def render_png(doc: Timeline, path: str | Path, *, dpi: int = 110) -> None:
    try:
        import matplotlib
    except ImportError as e:
        raise RuntimeError("a PNG timeline needs matplotlib: pip install 'ecoserve[sim]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = doc.groups()
    rows = sum(len(es) for _, es in groups)
    fig, axes = plt.subplots(5, 1, figsize=(14, 2.0 + 0.32 * rows + 7.5), sharex=True,
                             gridspec_kw={"height_ratios": [max(1.5, 0.32 * rows), 1.3, 1.3, 1.3, 1.3]})  # fmt: skip
    lanes, queue, ttft, tpot, kv = axes
    t0 = doc.start

    def rel(t: float) -> float:
        return t - t0

    # engine lanes, top to bottom in routing order
    y_of: dict[str, float] = {}
    labels, ticks, y = [], [], 0.0
    for name, engines in groups:
        for e in engines:
            y_of[e] = y
            labels.append(f"{name} / {e}")
            ticks.append(y + 0.4)
            y += 1.0
    for kind, color in KIND.items():
        for e, ly in y_of.items():
            bars = [(rel(s.start), max(s.end - s.start, 1e-3)) for s in doc.segments if s.engine == e and s.kind == kind]
            if bars:
                lanes.broken_barh(bars, (ly + 0.05, 0.65), facecolors=color, label=f"{kind} steps")
    for e, ly in y_of.items():  # draining and failed stretches, shaded under the steps
        run_start, run_state = None, None
        for smp in [*doc.samples, None]:
            st = smp.engines.get(e, (0.0, "serving"))[1] if smp is not None else None
            if run_state is not None and st != run_state:
                end = smp.time if smp is not None else doc.end
                lanes.broken_barh([(rel(run_start), end - run_start)], (ly, 0.8), facecolors=STATE[run_state], zorder=0)
                run_state = None
            if st in STATE and run_state is None:
                run_start, run_state = smp.time, st
    for e, ly in y_of.items():
        ps = [p for p in doc.phases if p.engine == e]
        for i, p in enumerate(ps):
            end = ps[i + 1].time if i + 1 < len(ps) else doc.end
            lanes.broken_barh([(rel(p.time), end - p.time)], (ly + 0.72, 0.1), facecolors=PHASE.get(p.phase, "#999"))
        marks = [rel(m.time) for m in doc.marks if m.engine == e]
        if marks:
            lanes.plot(marks, [ly] * len(marks), "k^", markersize=3)
    for ev in doc.events:
        lanes.axvline(rel(ev.time), color="#d62828", linestyle="--", linewidth=0.8)
        lanes.text(rel(ev.time), -0.4, f" {ev.event} {ev.instance or ''}", color="#d62828", fontsize=7)
    lanes.set_yticks(ticks, labels, fontsize=8)
    lanes.set_ylim(y + 0.1, -0.6)
    handles, names = lanes.get_legend_handles_labels()
    uniq = dict(zip(names, handles))
    if uniq:
        lanes.legend(uniq.values(), uniq.keys(), loc="upper right", fontsize=7, ncol=3)
    lanes.set_title(f"{doc.source} run: {doc.title}" if doc.title else f"{doc.source} run", fontsize=10, loc="left")

    ts = [rel(s.time) for s in doc.samples]
    queue.plot(ts, [s.pending for s in doc.samples], label="pending", color="#3b7dd8")
    queue.plot(ts, [s.in_flight for s in doc.samples], label="in flight", color="#e8871e")
    queue.set_ylabel("requests", fontsize=8)
    queue.legend(fontsize=7, loc="upper right")
    for ax, field_, slo, name in ((ttft, "ttft", doc.slo_ttft, "TTFT (s)"), (tpot, "tpot", doc.slo_tpot, "TPOT (s)")):
        pts = [(rel(lat.time), getattr(lat, field_)) for lat in doc.latencies if getattr(lat, field_) is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=4, color="#3b7dd8")
        if slo:
            ax.axhline(slo, color="#d62828", linestyle="--", linewidth=1, label=f"SLO {slo:g} s")
            ax.legend(fontsize=7, loc="upper right")
        ax.set_ylabel(name, fontsize=8)
        ax.set_ylim(bottom=0)
    for e in doc.engines():
        vals = [(rel(s.time), s.engines[e][0]) for s in doc.samples if e in s.engines]
        if vals:
            kv.plot([v[0] for v in vals], [v[1] * 100 for v in vals], label=e, linewidth=1)
    kv.set_ylabel("KV use (%)", fontsize=8)
    if doc.engines():
        kv.legend(fontsize=7, loc="upper right", ncol=4)
    kv.set_xlabel("seconds since the start", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
