"""Figures of both papers, drawn with matplotlib (headless: the Agg backend unless one is chosen)."""

import matplotlib

if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo"):
    matplotlib.use("Agg")  # figures are written to files; no display is needed or assumed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .dice import CLASS_NAMES, SIZE  # noqa: E402


def dice_examples(X, y, per_class=6, path=None):
    """Examples of each dice class, one column per class (2024 paper, Figure 5).

    X (n, 1024) or (n, 32, 32) images and their labels y; ink is drawn dark on
    white, as R drew it. Saves to ``path`` when given; returns the figure.
    """
    X, y = np.asarray(X), np.asarray(y)
    images = X.reshape(-1, SIZE, SIZE)
    fig, axes = plt.subplots(per_class, len(CLASS_NAMES), figsize=(1.2 * len(CLASS_NAMES), 1.2 * per_class),
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
