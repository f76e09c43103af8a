"""What a run leaves on disk, and reading it back.

A run folder holds ``synthetic.npz`` (``points`` float32 (N, P, D): grid coordinates for
MNIST, the unit ball's xyz for 3D shapes; ``labels`` int64 (N,)), ``synthetic.png`` (the set as
its evaluator sees it, one row per class),
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
import torch
import yaml

from ..core.errors import UserError
from ..core.types import Domain
from ..evaluate import draw_set

if TYPE_CHECKING:
    from .run import RunResult

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


def save_picture(path: Path, points: np.ndarray, labels: np.ndarray, domain: Domain,
                 class_names: tuple[str, ...] = ()) -> None:
    """The synthetic set as a PNG, one row per class (see ``evaluate.draw_set``)."""
    draw_set(domain, torch.from_numpy(points), torch.from_numpy(labels), path, class_names)


def save_run(result: "RunResult", out: str | os.PathLike) -> Path:
    """Write a ``RunResult``'s artifacts into ``out`` (created if needed)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_synthetic(out / "synthetic.npz", result.points, result.labels)
    save_picture(out / "synthetic.png", result.points, result.labels, result.domain, result.class_names)
    (out / "metrics.json").write_text(json.dumps(result.metrics(), indent=2))
    pd.DataFrame(result.history).to_csv(out / "history.csv", index=False)
    (out / "config.yaml").write_text(yaml.safe_dump(result.config.model_dump(), sort_keys=False))
    return out
