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
