"""What a run leaves on disk, and reading it back.

A run folder holds ``synthetic.npz`` (``points`` float32 (N, P, D): grid coordinates for
MNIST, the unit ball's xyz for 3D shapes; ``labels`` int64 (N,); for a set with blends also
``mix``, their logits (``methods.morph``)), ``synthetic.png`` (the set as
its evaluator sees it, one row per class),
``metrics.json``, ``history.csv`` and ``config.yaml`` (the full resolved config, readable by
``tune-distill run --config``); a selection of real shapes also ``selection.json`` (which shapes,
thinned how: ``selection.py``). A shipped cell (``distilled/``) keeps only what a command cannot
rebuild: a selection as its ``selection.json`` instead of the points, and no picture
(``tune-distill draw`` makes one).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import yaml

from ..core.errors import UserError
from ..core.types import Domain
from ..data import Dataset, dataset_spec, load_dataset
from ..evaluate import draw_set
from ..methods.morph import expanded
from .selection import SELECTION_FILE, read_selection, rebuild, selection_of, write_selection

if TYPE_CHECKING:
    from .run import RunResult

def save_synthetic(path: Path, points: np.ndarray, labels: np.ndarray, mix: np.ndarray | None = None) -> None:
    blends = {} if mix is None else {"mix": mix.astype(np.float32)}
    np.savez_compressed(path, points=points.astype(np.float32), labels=labels.astype(np.int64), **blends)


def load_synthetic(path: str | os.PathLike, data: Dataset | None = None,
                   data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(points, labels)`` that a classifier trains on, from a ``synthetic.npz`` or a
    ``selection.json`` (or the folder holding one): a set with blends (``mix``) comes with them
    (``methods.morph.expanded``). A selection is rebuilt from its dataset: ``data`` if given,
    else loaded from ``data_dir`` (else ``$TUNE_DISTILL_DATA``, else the cache)."""
    p = Path(path)
    if p.is_dir():  # a run folder holds both: its points load faster than a selection rebuilds
        only_picks = (p / SELECTION_FILE).exists() and not (p / "synthetic.npz").exists()
        p = p / (SELECTION_FILE if only_picks else "synthetic.npz")
    if p.name == SELECTION_FILE:
        selection = read_selection(p)
        if data is None:
            data = load_dataset(selection.dataset, data_dir, **selection.options)
        return rebuild(selection, data)
    try:
        with np.load(p) as f:
            points, labels, mix = f["points"], f["labels"], f["mix"] if "mix" in f else None
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"cannot read a synthetic set from {p} ({exc}); expected a synthetic.npz with points and labels") from None
    if mix is None:
        return points, labels
    try:
        points_t, labels_t = expanded(torch.from_numpy(points), torch.from_numpy(labels), torch.from_numpy(mix))
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"{p}: its blends' logits {mix.shape} do not fit its {points.shape[0]} clouds ({exc})") from None
    return points_t.numpy(), labels_t.numpy()


def record_scores(cell: str | os.PathLike, name: str, result: dict) -> tuple[Path, bool | None]:
    """File ``result`` (a scored evaluation: ``accuracies`` and the ``evaluator`` settings behind
    them) as ``<cell>/scores/<name>.json``: ``(path, None)`` when it is new; when one is already
    there, nothing is written and ``(path, same)`` says whether its accuracies are these, bit for
    bit. Scores recorded under other settings raise a ``UserError`` (delete the file to re-record)."""
    path = Path(cell) / "scores" / f"{name}.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("evaluator") != result["evaluator"] or old.get("seed") != result["seed"]:
            raise UserError(f"{path} holds scores made under other evaluation settings; delete it to re-record "
                            "(nothing was overwritten)")
        keys = [k for k in result if k.endswith("accuracies")]
        return path, all(old.get(k) == result[k] for k in keys)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return path, None


def read_scores(cell: str | os.PathLike) -> dict[str, dict]:
    """Every scoring ``record_scores`` filed in ``cell``, by name (``<protocol>-<net>``), sorted."""
    return {path.stem: json.loads(path.read_text()) for path in sorted((Path(cell) / "scores").glob("*.json"))}


def save_picture(path: Path, points: np.ndarray, labels: np.ndarray, domain: Domain,
                 class_names: tuple[str, ...] = ()) -> None:
    """The synthetic set as a PNG, one row per class (see ``evaluate.draw_set``)."""
    draw_set(domain, torch.from_numpy(points), torch.from_numpy(labels), path, class_names)


def save_run(result: "RunResult", out: str | os.PathLike, shipped: bool = False) -> Path:
    """Write a ``RunResult``'s artifacts into ``out`` (created if needed).

    The full-data ceiling (``init=full``) writes no synthetic set: it is the training split
    itself, tens of MB that the dataset already holds. ``shipped`` writes a cell of
    ``distilled/``: a selection as its picks only, no picture, no empty history.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    selection = selection_of(result)
    if selection is not None:
        write_selection(selection, out)
    if result.config.init != "full" and not (shipped and selection is not None):
        save_synthetic(out / "synthetic.npz", result.points, result.labels, result.mix)
    if result.config.init != "full" and not shipped:
        save_picture(out / "synthetic.png", result.points, result.labels, result.domain, result.class_names)
    (out / "metrics.json").write_text(json.dumps(result.metrics(), indent=2))
    if result.history or not shipped:
        write_history(out / "history.csv", result.history)
    (out / "config.yaml").write_text(yaml.safe_dump(result.config.model_dump(), sort_keys=False))
    return out


def write_history(path: Path, rows: list[dict]) -> None:
    """History rows as CSV, one column per key in order of first appearance, a row's missing keys
    left empty (as pandas writes them; the engine does not load pandas for one file)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(dict.fromkeys(k for row in rows for k in row)), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


PLY_COMMENT = {True: "tune_distill synthetic cloud; x = width, y = -height, z = depth (grid cells)",
               False: "tune_distill synthetic cloud; x, y, z in the dataset's unit-sphere frame (z up)"}


def write_ply(path: Path, points: np.ndarray, comment: str = "", image: bool = True) -> None:
    """One cloud (P, D) as a binary little-endian PLY of float32 vertices: an image's grid
    coordinates (depth, height, width) turned to x = width, y = -height, z = depth, or (``image``
    False) a 3D shape's xyz as they are."""
    from plyfile import PlyData, PlyElement

    pts = np.asarray(points, dtype=np.float32)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3):
        raise ValueError(f"expected (P, 2) or (P, 3) points, got {pts.shape}")
    if pts.shape[1] == 2:  # (height, width)
        pts = np.concatenate([np.zeros_like(pts[:, :1]), pts], axis=1)
    vertex = np.empty(len(pts), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    if image:
        vertex["x"], vertex["y"], vertex["z"] = pts[:, 2], -pts[:, 1], pts[:, 0]
    else:
        vertex["x"], vertex["y"], vertex["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    comments = [PLY_COMMENT[image]] + ([comment] if comment else [])
    PlyData([PlyElement.describe(vertex, "vertex")], byte_order="<", comments=comments).write(str(path))


def save_plys(folder: Path, points: np.ndarray, labels: np.ndarray, dataset: str) -> None:
    """Every cloud as ``folder/class<label>_<k>.ply``, in the dataset's frame (see ``write_ply``)."""
    folder.mkdir(parents=True, exist_ok=True)
    counts: dict[int, int] = {}
    for cloud, label in zip(points, labels.tolist()):
        k = counts.get(label, 0)
        counts[label] = k + 1
        write_ply(folder / f"class{label}_{k}.ply", cloud, comment=f"class {label}, cloud {k}",
                  image=dataset_spec(dataset).kind == "image")
