"""Plots of simulation results (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

COLORS = {"ecoserve": "#d62728", "vllm": "#1f77b4", "sarathi": "#2ca02c", "distserve": "#9467bd",
          "mooncake": "#ff7f0e", "round-robin": "#8c564b", "least-loaded": "#7f7f7f"}


def _plt():
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover
        raise RuntimeError("plotting needs matplotlib: pip install 'ecoserve[sim]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_attainment(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    path: str,
    *,
    title: str = "",
    levels: Mapping[str, float] | None = None,
    xlabel: str = "request rate (req/s)",
) -> None:
    """SLO attainment against rate, one line per policy, with the levels dashed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, pts in curves.items():
        pts = sorted(pts)
        if not pts:
            continue
        ax.plot([r for r, _ in pts], [a * 100 for _, a in pts], marker="o", ms=3, lw=1.5, label=name,
                color=COLORS.get(name))
    for name, lvl in (levels or {}).items():
        ax.axhline(lvl * 100, ls="--", lw=0.8, color="grey")
        ax.text(ax.get_xlim()[1], lvl * 100, f" {name}", va="center", fontsize=8, color="grey")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("SLO attainment (%)")
    ax.set_ylim(0, 102)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    _finish(plt, fig, ax, path, title)


def plot_bars(groups: Mapping[str, Mapping[str, float]], path: str, *, title: str = "", ylabel: str = "") -> None:
    """Grouped bars: ``groups[group][policy] = value``."""
    plt = _plt()
    names = list(dict.fromkeys(p for g in groups.values() for p in g))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(groups) + 2), 4))
    width = 0.8 / max(1, len(names))
    for i, p in enumerate(names):
        xs = [j + i * width for j in range(len(groups))]
        ax.bar(xs, [g.get(p, 0.0) for g in groups.values()], width, label=p, color=COLORS.get(p))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))])
    ax.set_xticklabels(list(groups), fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    _finish(plt, fig, ax, path, title)


def _finish(plt, fig, ax, path: str, title: str) -> None:
    """Legend, title, layout; write the PNG and free the figure."""
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_timeline(
    timeline: Mapping,
    path: str,
    *,
    title: str = "",
    steps: Sequence[tuple[float, float]] | None = None,
) -> None:
    """An autoscaling run over time (``autoscale.SimAutoscaler.timeline``):
    per-window SLO attainment of the requests arriving in it (left axis), the
    instance count and the offered rate (right axis), splits and merges marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    wins = timeline["windows"]
    xs = [(w["t0"] + w["t1"]) / 2 for w in wins if w["arrivals"]]
    ax.plot(xs, [w["attainment"] * 100 for w in wins if w["arrivals"]], marker="o", ms=2.5, lw=1.3,
            color=COLORS["ecoserve"], label="SLO attainment (arrivals in window)")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("SLO attainment (%)")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    right = ax.twinx()
    samples = timeline["samples"]
    end = wins[-1]["t1"] if wins else 0.0
    ts = [s["t"] for s in samples] + [end]
    right.step(ts, [s["instances"] for s in samples] + [samples[-1]["instances"]], where="post", lw=1.6,
               color="black", label="instances (routable)")
    right.step(ts, [s["instances"] + s["launching"] + s["draining"] for s in samples]
               + [samples[-1]["instances"] + samples[-1]["launching"] + samples[-1]["draining"]],
               where="post", lw=0.9, ls=":", color="black", label="+ launching + draining")
    handles = []
    if steps:
        t, rx, ry = 0.0, [], []
        for rate, dur in steps:
            rx += [t, t + dur]
            ry += [rate, rate]
            t += dur
        rate_ax = ax.twinx()
        rate_ax.spines["right"].set_position(("axes", 1.1))
        rate_ax.plot(rx, ry, color="#1f77b4", lw=1.0, alpha=0.6, label="offered load (req/s)")
        rate_ax.set_ylabel("offered load (req/s)", color="#1f77b4")
        rate_ax.set_ylim(0, max(ry) * 1.15)
        handles += rate_ax.get_legend_handles_labels()[0]
    for e in timeline["events"]:
        if e["action"] in ("split", "merge"):
            ax.axvline(e["t"], color="#9467bd" if e["action"] == "split" else "#2ca02c", lw=0.9, ls="--")
            ax.text(e["t"], 3, f" {e['action']} {e['before']}->{e['layout']}", rotation=90, fontsize=7,
                    va="bottom", color="dimgrey")
    right.set_ylabel("instances")
    right.set_ylim(0, max(s["instances"] + s["launching"] + s["draining"] for s in samples) + 2)
    ax.set_xlim(0, end)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = right.get_legend_handles_labels()
    ax.legend(h1 + h2 + handles, l1 + l2 + [h.get_label() for h in handles], fontsize=7, loc="lower left")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
