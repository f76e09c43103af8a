"""What a run leaves on disk, and reading it back.

A run folder holds ``synthetic.npz`` (``points`` float32 (N, P, D) in grid coordinates,
``labels`` int64 (N,)), ``synthetic.png`` (the rendered set, one row per class),
``metrics.json``, ``history.csv`` and ``config.yaml`` (the full resolved config, readable by
``tune-distill run --config``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import yaml

from .errors import UserError

if TYPE_CHECKING:
    from .run import RunResult

ARTIFACTS = ("synthetic.npz", "synthetic.png", "metrics.json", "history.csv", "config.yaml")


def save_synthetic(path: Path, points: np.ndarray, labels: np.ndarray) -> None:
    np.savez_compressed(path, points=points.astype(np.float32), labels=labels.astype(np.int64))


def load_synthetic(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(points, labels)`` from a ``synthetic.npz`` (or the folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "synthetic.npz"
    try:
        with np.load(p) as f:
            return f["points"], f["labels"]
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"cannot read a synthetic set from {p} ({exc}); expected a synthetic.npz with points and labels") from None


def save_picture(path: Path, points: np.ndarray, labels: np.ndarray, grid_shape: tuple[int, ...]) -> None:
    """The rendered synthetic set as a PNG: one row per class, one column per cloud."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from .data.base import PointBatch
    from .evaluate import render

    images = render(PointBatch.from_padded(torch.from_numpy(points)), grid_shape)[:, 0].numpy()
    classes = sorted(set(labels.tolist()))
    cols = max(int((labels == c).sum()) for c in classes)
    fig, axes = plt.subplots(len(classes), cols, figsize=(cols * 0.9 + 0.4, len(classes) * 0.9), squeeze=False)
    for r, c in enumerate(classes):
        members = np.nonzero(labels == c)[0]
        for k in range(cols):
            ax = axes[r][k]
            ax.axis("off")
            if k < len(members):
                ax.imshow(images[members[k]], cmap="gray_r", vmin=0, vmax=1)
        axes[r][0].set_title(str(c), x=-0.15, y=0.3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_run(result: "RunResult", out: str | os.PathLike) -> Path:
    """Write a ``RunResult``'s artifacts into ``out`` (created if needed)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_synthetic(out / "synthetic.npz", result.points, result.labels)
    save_picture(out / "synthetic.png", result.points, result.labels, result.grid_shape)
    (out / "metrics.json").write_text(json.dumps(result.metrics(), indent=2))
    pd.DataFrame(result.history).to_csv(out / "history.csv", index=False)
    (out / "config.yaml").write_text(yaml.safe_dump(result.config.model_dump(), sort_keys=False))
    return out
