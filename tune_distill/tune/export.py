"""Exporting an experiment's best synthetic sets: npz + png + config + metrics, PLY clouds, a leaderboard.

For each of the top trials (by objective) the best seed's run folder, as the trainable wrote it
with ``artifacts.save_run``, is copied into ``<out>/<rank>_trial<n>/`` (``synthetic.npz``,
``synthetic.png``, ``config.yaml``, ``metrics.json`` with a ``search`` section added,
``history.csv``), and every cloud is written as a binary PLY file ``ply/class<label>_<k>.ply``
with ``plyfile``. ``<out>/leaderboard.csv`` ranks every trial that has an objective.

PLY axes: the engine's grid coordinates are (depth, height, width); a viewer wants the digit
upright, so x = width, y = -height, z = depth (each file's header says so).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml
import pandas as pd

from ..recipe.artifacts import load_synthetic, save_plys
from ..recipe.config import Config
from ..core.errors import UserError
from .results import leaderboard, load_results, param_column

EXPORT_DIR_RE = re.compile(r"^\d{2,}_trial\d+$")
def _plain(value: Any) -> Any:
    """JSON-safe scalars (numpy types, NaN -> None)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def export_trial(row: pd.Series, params: list[str], out: Path, experiment: str) -> Path:
    """Copy one trial's best seed into ``out`` and add its PLY clouds; returns ``out``."""
    npz = Path(row["synthetic"])
    seed_folder = npz.parent
    out.mkdir(parents=True, exist_ok=True)
    for name in ("synthetic.npz", "synthetic.png", "config.yaml", "history.csv"):
        if (seed_folder / name).exists():
            shutil.copy2(seed_folder / name, out / name)
    metrics = json.loads((seed_folder / "metrics.json").read_text()) if (seed_folder / "metrics.json").exists() else {}
    seeds = [c for c in row.index if c.startswith("acc_seed")]
    metrics["search"] = {
        "experiment": experiment, "trial": _plain(row["trial"]), "trial_id": row["trial_id"],
        "status": row["status"], "objective": _plain(row["objective"]),
        "acc_mean": _plain(row["acc_mean"]), "acc_std": _plain(row["acc_std"]), "acc_min": _plain(row["acc_min"]),
        "per_seed": {c.removeprefix("acc_"): _plain(row[c]) for c in seeds},
        "exported_seed": _plain(row["best_seed"]), "params": {p: _plain(row[param_column(p)]) for p in params},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    points, labels = load_synthetic(out / "synthetic.npz")
    config = yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").exists() else {}
    save_plys(out / "ply", points, labels, (config or {}).get("dataset", Config().dataset))
    return out


def _exported_from(folder: Path) -> Path | None:
    """The experiment an export folder came from (its metrics.json says), or None if unreadable."""
    try:
        return Path(json.loads((folder / "metrics.json").read_text())["search"]["experiment"]).resolve()
    except (OSError, ValueError, KeyError, TypeError):
        return None


def export(name_or_path: str | os.PathLike, top: int = 5, out: str | os.PathLike | None = None,
           storage: str | os.PathLike | None = None) -> Path:
    """Export the ``top`` trials of an experiment into ``out`` (default ``exports/<name>``).

    Raises:
        UserError: no such experiment, or no trial with a finished seed yet.
    """
    if top < 1:
        raise UserError(f"--top must be at least 1 (got {top})")
    df = load_results(name_or_path, storage)
    experiment = Path(df.attrs["experiment"])
    ranked = leaderboard(df)
    ranked = ranked[ranked["synthetic"].notna()]
    if ranked.empty:
        counts = ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items()) or "no trials"
        raise UserError(f"experiment {experiment.name!r} has no trial with a finished seed yet ({counts})")
    out_dir = Path(out) if out is not None else Path("exports") / experiment.name
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; give a folder")
    olds = [d for d in out_dir.iterdir() if d.is_dir() and EXPORT_DIR_RE.match(d.name)] if out_dir.exists() else []
    for old in olds:  # a previous export of this experiment is replaced; anyone else's is kept
        if _exported_from(old) != experiment.resolve():
            raise UserError(f"--out {out_dir} holds {old.name}, not exported from {experiment.name!r}; "
                            "choose another --out (nothing was removed)")
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in olds:
        shutil.rmtree(old)
    width = max(2, len(str(len(ranked))))
    exported: dict[str, str] = {}
    for rank, (_, row) in enumerate(ranked.head(top).iterrows(), start=1):
        folder = out_dir / f"{rank:0{width}d}_trial{row['trial']}"
        export_trial(row, list(df.attrs["space"]["params"]), folder, str(experiment))
        exported[row["trial_id"]] = folder.name
    board = ranked.drop(columns=["trial_dir"]).copy()
    board.insert(0, "rank", range(1, len(board) + 1))
    board["export_dir"] = board["trial_id"].map(exported)
    board.to_csv(out_dir / "leaderboard.csv", index=False)
    return out_dir
