"""Figures of both papers, drawn with matplotlib.

Figures are built as ``matplotlib.figure.Figure`` objects, not through pyplot,
so they need no display and leave the user's pyplot backend and state alone;
each function saves to ``path`` when given and returns the figure (which a
notebook displays). These are the drawing primitives; ``figures.py`` builds
every figure of both papers from run directories and sweep folders with them.
"""

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from ..dice import CLASS_NAMES, SIZE
from ..eos import EDGE

STYLES = ("-", "--", "-.", (0, (1, 1)))      # one per run where colour alone could hide a line under another


def subplots(*args, **kwargs):
    fig = Figure(figsize=kwargs.pop("figsize", (6.4, 4.0)))
    return fig, fig.subplots(*args, **kwargs)


def dice_examples(X, y, per_class=6, path=None):
    """Examples of each dice class, one column per class (2024 paper, Figure 5).

    X (n, 1024) or (n, 32, 32) images and their labels y; ink is drawn dark on
    white, as R drew it. Saves to ``path`` when given; returns the figure.
    """
    X, y = np.asarray(X), np.asarray(y)
    images = X.reshape(-1, SIZE, SIZE)
    fig, axes = subplots(per_class, len(CLASS_NAMES), figsize=(1.2 * len(CLASS_NAMES), 1.2 * per_class),
                          squeeze=False)
    for c, name in enumerate(CLASS_NAMES):
        rows = np.flatnonzero(y == c)[:per_class]
        for r in range(per_class):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r < len(rows):
                ax.imshow(images[rows[r]], cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            if r == 0:
                ax.set_title(name)
    fig.suptitle("Synthetic dice: examples of each class")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plain_log_ticks(ax):
    """Tick labels like 0.3 and 2 on a log y axis that spans less than a decade (matplotlib's default there
    is 1.075 × 10^0)."""
    low, high = ax.get_ylim()
    if low > 0 and high / low < 10:
        plain = FuncFormatter(lambda value, _: f"{value:.3g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)


def finish(fig, ax, path, title):
    if ax.get_yscale() == "log":
        plain_log_ticks(ax)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def colours(n):
    return colormaps["viridis"](np.linspace(0.1, 0.85, max(n, 1)))


def rho_over_time(runs, n_classes, path=None):
    """ρ_{n_c−1} (solid) and ρ_{n_c} (dotted) against t = nη, one colour per run (2022 paper, Figures 1–2).

    ``runs``: list of (label, telemetry rows).
    """
    fig, ax = subplots()
    for (label, rows), colour in zip(runs, colours(len(runs))):
        t = [r["t"] for r in rows]
        ax.plot(t, [r["rho"][n_classes - 2] for r in rows], "-", color=colour,
                label=rf"{label}: $\rho_{{{n_classes - 1}}}$")
        ax.plot(t, [r["rho"][n_classes - 1] for r in rows], ":", color=colour,
                label=rf"{label}: $\rho_{{{n_classes}}}$")
    ax.axhline(1.0, color="k", lw=0.8, ls="--", label=r"edge of stability ($\rho = 1$)")
    ax.axhline(EDGE, color="0.5", lw=0.8, ls="-.", label=rf"at the edge, as the verdicts count it ($\rho > {EDGE}$)")
    ax.set_xlabel(r"$t = n\eta$")
    ax.set_ylabel(r"$\rho_i = \eta\lambda_i/2$")
    ax.legend(fontsize=7)
    return finish(fig, ax, path, rf"Edge of stability across $n_c - 1 = {n_classes - 1}$ eigenvectors?")


def projections_over_time(runs, path=None):
    """‖P_top g‖ (solid) and ‖P_bulk g‖ (dotted) against t (2022 paper, Figure 3)."""
    fig, ax = subplots()
    for (label, rows), colour in zip(runs, colours(len(runs))):
        t = [r["t"] for r in rows]
        ax.semilogy(t, [r["top_norm"] for r in rows], "-", color=colour,
                    label=rf"{label}: $\|P_{{\mathrm{{top}}}}\,g\|$")
        ax.semilogy(t, [r["bulk_norm"] for r in rows], ":", color=colour,
                    label=rf"{label}: $\|P_{{\mathrm{{bulk}}}}\,g\|$")
    ax.set_xlabel(r"$t = n\eta$")
    ax.set_ylabel("norm of the projected gradient")
    ax.legend(fontsize=7)
    return finish(fig, ax, path, "Gradient in the top and bulk subspaces")


def sharpness_over_time(runs, path=None):
    """λ_1 of ∇²L̃ against t, with 2/η dashed for the gradient-descent runs.

    ``runs``: list of (label, telemetry rows, lr or None).
    """
    fig, ax = subplots()
    for (label, rows, lr), colour, style in zip(runs, colours(len(runs)), STYLES * len(runs)):
        ax.plot([r["t"] for r in rows], [r["eigenvalues"][0] for r in rows], linestyle=style, color=colour,
                label=rf"{label}: $\lambda_1$")
        if lr is not None:
            ax.axhline(2.0 / lr, color=colour, ls=":", lw=0.8, label=rf"{label}: $2/\eta$")
    ax.set_xlabel(r"$t$")
    ax.set_ylabel(r"sharpness $\lambda_1$")
    ax.legend(fontsize=7)
    return finish(fig, ax, path, "Sharpness of the training loss")


def loss_over_time(runs, path=None):
    """Training loss against t; ``runs``: list of (label, metrics columns)."""
    fig, ax = subplots()
    for (label, metrics), colour, style in zip(runs, colours(len(runs)), STYLES * len(runs)):
        ax.semilogy(metrics["t"], metrics["loss"], linestyle=style, color=colour, label=label)
    ax.set_xlabel(r"$t$")
    ax.set_ylabel(r"training loss $\tilde{L}$")
    ax.legend(fontsize=7)
    return finish(fig, ax, path, "Training loss")


def curves(series, xlabel, ylabel, title, path=None, logy=False):
    """Generic line plot: ``series`` is a list of (label, x, y); colours follow the order (e.g. dataset size)."""
    fig, ax = subplots()
    for (label, x, y), colour in zip(series, colours(len(series))):
        (ax.semilogy if logy else ax.plot)(x, y, "-", color=colour, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    return finish(fig, ax, path, title)


def colour_scale(values):
    """{value: colour} over the sorted distinct values (dataset sizes, learning rates…), dark to light."""
    distinct = sorted(set(values), key=lambda v: (isinstance(v, str), v))
    return dict(zip(distinct, colours(len(distinct))))


def panel_grid(panels, lines, title, xlabel="t", legend_title=None, logy=(), path=None, ncols=3):
    """One panel per quantity, one line per run in every panel: the layout of most of both papers' figures.

    ``panels``: the panels' y labels (in the papers' notation). ``lines``: list
    of ``(label, colour, style, x, ys)`` with ``ys[j]`` the curve of panel j
    (None leaves it out). Lines sharing a label are listed once in the legend
    (the seeds of one dataset size share a colour). ``logy``: indices of the
    panels drawn on a log scale.
    """
    ncols = min(ncols, len(panels))
    nrows = -(-len(panels) // ncols)
    size = (6.4, 4.4) if len(panels) == 1 else (4.0 * ncols, 3.1 * nrows + 0.6)
    fig, axes = subplots(nrows, ncols, squeeze=False, figsize=size)
    for j, (ax, ylabel) in enumerate(zip(axes.flat, panels)):
        for label, colour, style, x, ys in lines:
            if ys[j] is not None:
                ax.plot(x, ys[j], style, color=colour, lw=1.2, label=label)
        if j in logy:
            ax.set_yscale("log")
            plain_log_ticks(ax)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles and len(panels) == 1:
        axes[0, 0].legend(handles.values(), handles.keys(), title=legend_title, fontsize=7, title_fontsize=8)
    elif handles:
        ncol = min(len(handles), 6)
        fig.legend(handles.values(), handles.keys(), title=legend_title, fontsize=7, title_fontsize=8,
                   loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=ncol)
    legend_rows = -(-len(handles) // 6) if handles and len(panels) > 1 else 0
    fig.suptitle(title, x=0.02, ha="left", fontsize=10)
    bottom = (0.045 + 0.035 * legend_rows) * (4.0 / size[1]) if legend_rows else 0
    fig.tight_layout(rect=(0, bottom, 1, 1 - 0.3 / size[1]))
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig

