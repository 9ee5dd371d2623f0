"""The report's figures (matplotlib, no display): each function builds one figure from runs and returns it;
:func:`save` writes and closes it. What to plot is decided by the report's sections, not here."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

from redr.experiments.report.names import COLORS, DYNAMIC, dataset_title, label, order
from redr.experiments.results import Run, mean, std

#: The zoom panel of the accuracy figure shows the last third of training, where the algorithms differ.
ZOOM_FRACTION = 1 / 3


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, dpi: int = 85) -> None:
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)


def placeholder(path: Path, title: str, message: str) -> None:
    """A small figure that says why there is nothing to plot (every report has the same figure files)."""
    fig, ax = _plt().subplots(figsize=(6, 2.2))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.45, message, ha="center", va="center", wrap=True, fontsize=9)
    save(fig, path, dpi=80)


def curves(runs: list[Run], key: str = "test_acc"):
    """Epochs, and mean and std over runs of ``key`` per epoch (runs cut to the shortest)."""
    n = min(len(r.rows) for r in runs)
    epochs = [runs[0].rows[i]["epoch"] for i in range(n)]
    values = [[r.rows[i][key] for r in runs] for i in range(n)]
    return epochs, [mean(v) for v in values], [std(v) for v in values]


def _plot_curve(ax, runs, name, style="-", color=None, scale=100.0, band=0.15):
    epochs, m, s = curves(runs)
    m, s = [scale * x for x in m], [scale * x for x in s]
    line, = ax.plot(epochs, m, style, label=name, linewidth=1.3, color=color)
    if len(runs) > 1:
        ax.fill_between(epochs, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], alpha=band,
                        color=line.get_color())
    return epochs, m, s


def _zoom(ax, drawn: list, first_epoch: float, last_epoch: float) -> None:
    """Limit ``ax`` to epochs >= ``first_epoch`` and to the range the dynamic algorithms' mean ± std take there
    (static sparse and dense baselines may lie outside: they differ by more than the algorithms do)."""
    values = []
    for model, (epochs, m, s) in drawn:
        if model in DYNAMIC:
            values += [v for e, a, b in zip(epochs, m, s) if e >= first_epoch for v in (a - b, a + b)]
    if not values:
        values = [v for _, (epochs, m, _) in drawn for e, v in zip(epochs, m) if e >= first_epoch]
    if last_epoch > first_epoch:  # a one-epoch run has nothing to zoom on
        ax.set_xlim(first_epoch, last_epoch)
    if values:
        low, high = min(values), max(values)
        pad = max(0.05 * (high - low), 0.05)
        ax.set_ylim(low - pad, high + pad)


def accuracy_figure(groups: dict, densities: Sequence[float], dataset: str):
    """Test accuracy per epoch, one column per density: the whole run on top, the last third below.

    ``groups``: (model, density or None for a dense net) -> its runs."""
    plt = _plt()
    fig, axes = plt.subplots(2, len(densities), figsize=(4.6 * len(densities), 7.0), squeeze=False,
                             gridspec_kw={"height_ratios": [1, 1]})
    last = max(len(rs[0].rows) for rs in groups.values())
    first = max(1, round(last * (1 - ZOOM_FRACTION)))
    for j, d in enumerate(densities):
        full, zoom = axes[0][j], axes[1][j]
        drawn = []
        for (model, dens), rs in sorted(groups.items(), key=lambda kv: order(kv[0][0])):
            if dens is None or abs(dens - d) < 1e-9:
                style = "--" if dens is None else "-"
                drawn.append((model, _plot_curve(full, rs, label(model), style, COLORS.get(model))))
                _plot_curve(zoom, rs, label(model), style, COLORS.get(model), band=0.07)  # bands overlap here
        _zoom(zoom, drawn, first, last)
        full.set_title(f"d = {d:g}")
        zoom.set_title(f"d = {d:g}, epochs {first}-{last} (zoom)", fontsize=9)
        for ax in (full, zoom):
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("test accuracy (%)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{dataset_title(dataset)}: test accuracy while training (mean ± std over seeds)")
    fig.tight_layout()
    return fig


def induced_figure(groups: dict, densities: Sequence[float], dataset: str):
    """|loss after - loss before| at each redistribution, log scale; open markers where the loss went down.
    Returns the figure and notes for its caption."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(densities), figsize=(4.6 * len(densities), 3.6), sharey=True, squeeze=False)
    decreases, floor, floored = False, 1e-7, False
    for ax, d in zip(axes[0], densities):
        for algo in DYNAMIC:
            rs = groups.get((algo, d))
            if not rs:
                continue
            per_epoch = defaultdict(list)
            for r in rs:
                for epoch, value in r.induced_losses():
                    per_epoch[epoch].append(value)
            epochs = sorted(per_epoch)
            values = [mean(per_epoch[e]) for e in epochs]
            color = COLORS.get(algo)
            floored |= any(abs(v) < floor for v in values)
            ax.plot(epochs, [max(abs(v), floor) for v in values], "-", color=color, label=label(algo), linewidth=1.2)
            for e, v in zip(epochs, values):  # filled: the loss went up; open: it went down
                decreases |= v < 0
                ax.plot([e], [max(abs(v), floor)], "o", markersize=4, color=color,
                        markerfacecolor=color if v >= 0 else "white")
        ax.set_yscale("log")
        ax.set_title(f"d = {d:g}")
        ax.set_xlabel("epoch of the redistribution")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("|loss after - loss before| (log)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"{dataset_title(dataset)}: training loss induced by redistribution")
    fig.tight_layout()
    notes = (" (some steps lowered the loss)" if decreases else "") + \
            (f"; changes below {floor:g} are drawn at {floor:g}" if floored else "")
    return fig, notes


def sweep_figure(groups: dict, settings: Sequence, algos: Sequence[str], key_label: str,
                 fmt_key: Callable, title: str):
    """One accuracy-curve panel per setting, and a last panel of final accuracy against the setting."""
    plt = _plt()
    n = len(settings) + 1
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4), squeeze=False)
    for ax, s in zip(axes[0], settings):
        for algo in algos:
            if groups.get((algo, s)):
                _plot_curve(ax, groups[(algo, s)], label(algo), color=COLORS.get(algo))
        ax.set_title(f"{key_label} = {fmt_key(s)}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    summary = axes[0][-1]
    for algo in algos:
        xs = [i for i, s in enumerate(settings) if groups.get((algo, s))]
        ys = [100 * mean(r.final_acc for r in groups[(algo, settings[i])]) for i in xs]
        summary.plot(xs, ys, "o-", label=label(algo), color=COLORS.get(algo))
    for ax in axes[0][1:-1]:  # the curve panels share the first one's accuracy range
        ax.sharey(axes[0][0])
    summary.set_xlabel(key_label)
    summary.set_xticks(range(len(settings)))
    summary.set_xticklabels([fmt_key(s) for s in settings], fontsize=7, rotation=30)
    summary.set_title("final accuracy", fontsize=9)
    summary.grid(alpha=0.3)
    summary.legend(fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def layer_density_figure(groups: dict, algos: Sequence[str], densities: Sequence[float], dataset: str):
    """Density of each sparse layer after every epoch (epoch 0: the target density), one panel per
    algorithm x density; ``groups``: (algorithm, density) -> runs."""
    plt = _plt()
    fig, axes = plt.subplots(len(algos), len(densities), figsize=(3.8 * len(densities), 2.8 * len(algos)),
                             squeeze=False, sharex=True)
    for i, algo in enumerate(algos):
        for j, d in enumerate(densities):
            ax = axes[i][j]
            rs = groups.get((algo, d))
            if not rs:
                ax.axis("off")
                continue
            for k, (layer, _) in enumerate(rs[0].layer_densities()):
                series = [r.layer_densities()[k][1] for r in rs if len(r.layer_densities()) > k]
                n = min(len(s) for s in series)
                epochs = [0] + [rs[0].rows[e]["epoch"] for e in range(n)]
                ax.plot(epochs, [d] + [mean(s[e] for s in series) for e in range(n)], label=layer)
            ax.set_title(f"{label(algo)}, d = {d:g}", fontsize=9)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("layer density")
            if i == len(algos) - 1:
                ax.set_xlabel("epoch")
            ax.legend(fontsize=6)
    fig.suptitle(f"{dataset_title(dataset)}: per-layer density")
    fig.tight_layout()
    return fig
