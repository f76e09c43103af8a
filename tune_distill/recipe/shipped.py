"""The shipped sets as a dataset: ``distilled/index.json`` and ``load_distilled``.

Every cell of a results table is a folder ``distilled/<table>/<row id>/ipc<N>/seed<S>/``. The
manifest lists each one with what a user asks first: what it is (a *selection* of real shapes,
a *distilled* set whose points were learned, the full-data *ceiling*, or a set *constructed*
without real shapes), how a class's storage is spent (clouds x points, stored floats), the
SHA-256 of the file that holds it, and its accuracy under every protocol and network it was
scored with (its own run's, plus any ``scores/<protocol>-<net>.json`` that ``tune-distill
evaluate --record`` added). ``tune-distill table`` rewrites the entries of its table; a test
rebuilds the manifest from the files and compares.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import UserError
from ..data import dataset_spec
from .artifacts import load_synthetic, read_scores
from .config import Config, load_config_file, make_config
from .selection import SELECTION_FILE
from .table import TableSpec, cell_dir

MANIFEST = "index.json"
# Where a checkout keeps the shipped sets: beside the package's source folder.
REPO_DISTILLED = Path(__file__).resolve().parents[2] / "distilled"


def default_root() -> Path:
    """``$TUNE_DISTILL_DISTILLED``, else the checkout's ``distilled/``, else ``./distilled``."""
    env = os.environ.get("TUNE_DISTILL_DISTILLED")
    if env:
        return Path(env)
    return REPO_DISTILLED if REPO_DISTILLED.is_dir() else Path("distilled")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _own_protocol(cfg: Config) -> str:
    """``protocol/net`` of the evaluation a cell's run made (MNIST's: the paper's ConvNets)."""
    if dataset_spec(cfg.dataset).evaluator == "image":
        return "paper/convnet"
    return f"{cfg.eval_protocol or 'table'}/{cfg.eval_net}"


def _scores(cell: Path, cfg: Config, metrics: dict) -> dict[str, dict[str, Any]]:
    """Accuracy (%) per protocol/net: the run's own evaluation, then any recorded re-scorings."""
    found = {_own_protocol(cfg): metrics}
    for name, scored in read_scores(cell).items():
        protocol, _, net = name.partition("-")
        found[f"{protocol}/{net}"] = scored
    out = {}
    for key, m in found.items():
        score = {m.get("split", "test"): round(100 * m["acc_mean"], 4), "runs": len(m.get("accuracies", []))}
        if "val_acc_mean" in m:
            score["val"] = round(100 * m["val_acc_mean"], 4)
        score["metric"] = m.get("metric", cfg.eval_metric)
        out[key] = score
    return out


def cell_entry(root: Path, cell: Path, table: str, row_id: str, label: str) -> dict[str, Any]:
    """One manifest entry, read from a cell folder's files."""
    cfg = make_config(load_config_file(cell / "config.yaml"))  # keys added since the run: their defaults
    metrics = json.loads((cell / "metrics.json").read_text())
    stored = next((cell / name for name in (SELECTION_FILE, "synthetic.npz") if (cell / name).exists()), None)
    ceiling = cfg.init == "full"
    kind = ("ceiling" if ceiling else "selection" if stored is not None and stored.name == SELECTION_FILE
            else "distilled" if cfg.total_iterations else "constructed")
    clouds = None if ceiling else cfg.clouds_per_class
    return {
        "path": cell.relative_to(root).as_posix(), "table": table, "id": row_id, "label": label,
        "dataset": cfg.dataset, "ipc": cfg.ipc, "seed": cfg.seed, "kind": kind,
        "clouds_per_class": clouds, "points_per_cloud": cfg.cloud_points,
        # every coordinate, and the logits of any blends (methods/morph.py)
        "stored_floats_per_class": (None if ceiling else
                                    clouds * cfg.cloud_points * 3 + cfg.ipc * cfg.morphs * cfg.cloud_split),
        "file": stored.name if stored else None, "sha256": _sha256(stored) if stored else None,
        "protocol": _own_protocol(cfg), "scores": _scores(cell, cfg, metrics),
    }


def table_entries(spec: TableSpec, root: Path) -> list[dict[str, Any]]:
    """The manifest entries of every cell of ``spec`` found under ``root/<spec.name>``."""
    out = []
    for row in spec.rows:
        for ipc in filter(row.runs_at, spec.ipcs):
            for seed in spec.seeds:
                cell = cell_dir(root / spec.name, row, ipc, seed)
                if (cell / "metrics.json").exists():
                    out.append(cell_entry(root, cell, spec.name, str(row.id), row.label))
    return out


def read_manifest(root: Path) -> list[dict[str, Any]]:
    path = root / MANIFEST
    if not path.exists():
        return []
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); rebuild it with tune-distill table SPEC --no-run") from None


def update_manifest(spec: TableSpec, root: Path) -> Path:
    """Rewrite ``root/index.json``'s entries of ``spec``'s table from its cells (others stay)."""
    entries = [e for e in read_manifest(root) if e["table"] != spec.name] + table_entries(spec, root)
    entries.sort(key=lambda e: e["path"])
    root.mkdir(parents=True, exist_ok=True)
    path = root / MANIFEST
    path.write_text(json.dumps(entries, indent=1) + "\n")
    return path


def find_entry(cell: Path, root: Path | None = None) -> dict[str, Any] | None:
    """The manifest entry of a cell folder, if it is one of the shipped sets."""
    root = root or default_root()
    try:
        rel = cell.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None
    return next((e for e in read_manifest(root) if e["path"] == rel), None)


def load_distilled(dataset: str, row: str, ipc: int, seed: int = 0, root: str | os.PathLike | None = None,
                   data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A shipped set as ``(points (N, P, 3) float32, labels (N,) int64)``, clouds grouped by class.

    ``row`` is a row id of ``tables/<dataset>.yaml`` (``distilled/index.json`` lists them); a
    selection is rebuilt from the dataset (``data_dir``, else ``$TUNE_DISTILL_DATA``)::

        points, labels = load_distilled("modelnet10", "herding-fps-16x64", ipc=1, seed=0)
    """
    base = Path(root) if root is not None else default_root()
    entries = [e for e in read_manifest(base) if e["table"] == dataset]
    entry = next((e for e in entries if (e["id"], e["ipc"], e["seed"]) == (row, ipc, seed)), None)
    if entry is None:
        have = sorted({f"{e['id']} (ipc {e['ipc']})" for e in entries})
        hint = f"; shipped: {', '.join(have)}" if have else f"; no table {dataset!r} in {base / MANIFEST}"
        raise UserError(f"no shipped set {dataset}/{row} at ipc {ipc}, seed {seed}{hint}")
    if entry["file"] is None:
        raise UserError(f"{dataset}/{row} is the full training set: load the dataset itself")
    return load_synthetic(base / entry["path"], data_dir=data_dir)
