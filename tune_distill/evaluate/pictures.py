"""Pictures of synthetic sets: one row per class, one column per cloud, each cloud drawn by its evaluator."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np


def draw_grid(path: Path, labels, class_names: tuple[str, ...], paint: Callable, projection: str | None = None,
              size: float = 0.9) -> None:
    """A PNG with one row per class and one column per cloud; ``paint(ax, i)`` draws cloud ``i``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = sorted(set(labels.tolist()))
    cols = max(int((labels == c).sum()) for c in classes)
    fig = plt.figure(figsize=(cols * size + 0.6, len(classes) * size))
    for r, c in enumerate(classes):
        members = np.nonzero(labels == c)[0]
        for k in range(cols):
            ax = fig.add_subplot(len(classes), cols, r * cols + k + 1, projection=projection)
            ax.axis("off")
            if k < len(members):
                paint(ax, members[k])
            if k == 0:
                ax.set_title(class_names[c] if c < len(class_names) else str(c), x=-0.15, y=0.3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
