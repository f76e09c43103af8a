"""Sets made by other tools: read an ``.npz`` or ``.npy`` of point clouds, check it, put it in our frame.

A researcher scoring their own set (``tune-distill evaluate FILE --dataset modelnet10``) brings
clouds of any number of points in whatever file their tool writes: an ``.npz`` with points and
labels under names of its own, or an ``.npy`` of shape (N, P, 3) whose labels come from a second
file or from its layout (one block of N / C clouds per class, in class order). Sets in a y-up
frame (the common ModelNet HDF5 release) are turned into our z-up frame. Every way a file can be
wrong (rank, NaN, labels outside the dataset's classes, classes with no cloud) is one line that
names the problem; nothing is guessed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import UserError

# (x, y, z) of a y-up frame -> (x, -z, y): a rotation by +90 degrees about x, so y becomes up (z).
Y_UP_TO_Z_UP = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float32)


def _load_array(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {what} {path} ({exc}); give a NumPy .npy/.npz file") from None


def _read_labels(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return _load_array(path, "labels")
    try:
        return np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read labels from {path} ({exc}); give a .npy or a text file of integers") from None


def read_set(path: str | Path, num_classes: int, points_key: str = "points", labels_key: str = "labels",
             labels_file: str | Path | None = None, blocks: bool = False,
             up: str = "z") -> tuple[np.ndarray, np.ndarray]:
    """(points float32 (N, P, 3) in our z-up frame, labels int64 (N,)) from a file of another tool.

    ``.npz``: arrays ``points_key`` and ``labels_key`` (or ``labels_file`` / ``blocks`` instead of
    the latter). ``.npy``: the points; labels from ``labels_file`` (.npy or text, one integer per
    cloud) or, with ``blocks``, one block of N / ``num_classes`` clouds per class in class order.
    ``up="y"`` rotates a y-up set into the z-up frame. The set is checked by ``check_set``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    if up not in ("y", "z"):
        raise UserError(f"--up must be y or z, got {up!r}")
    labels = None
    if path.suffix == ".npz":
        with _open_npz(path) as f:
            if points_key not in f:
                raise UserError(f"{path} has no array {points_key!r} (it has {', '.join(f.files)}); "
                                "name the points with --points-key")
            points = f[points_key]
            if labels_file is None and not blocks:
                if labels_key not in f:
                    raise UserError(f"{path} has no array {labels_key!r} (it has {', '.join(f.files)}); name the "
                                    "labels with --labels-key, or give --labels FILE or --labels-blocks")
                labels = f[labels_key]
    elif path.suffix == ".npy":
        points = _load_array(path, "points")
        if labels_file is None and not blocks:
            raise UserError(f"{path} holds points only: give their labels with --labels FILE, or --labels-blocks "
                            "when the clouds come one block per class, in class order")
    else:
        raise UserError(f"{path}: expected a .npz or .npy file")
    if labels_file is not None:
        labels = _read_labels(Path(labels_file))
    elif blocks:
        n = len(points) if points.ndim else 0
        if n % num_classes:
            raise UserError(f"{path}: {n} clouds do not split into {num_classes} equal class blocks; "
                            "give the labels with --labels FILE")
        labels = np.repeat(np.arange(num_classes), n // num_classes)
    points, labels = check_set(points, labels, num_classes, str(path))
    if up == "y":
        points = points @ Y_UP_TO_Z_UP.T
    return np.ascontiguousarray(points, np.float32), labels


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path} ({exc}); give a NumPy .npz file") from None


def check_set(points: np.ndarray, labels: np.ndarray, num_classes: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``points`` as float32 (N, P, 3) and ``labels`` as int64 (N,), or a one-line ``UserError``
    naming what is wrong: rank or last axis, an empty set, non-finite values, labels that are not
    integers, not one per cloud or outside 0..C-1, or classes without a cloud."""
    if points.ndim != 3 or points.shape[2] != 3:
        raise UserError(f"{name}: points must have shape (clouds, points per cloud, 3); got {points.shape}")
    if not points.size:
        raise UserError(f"{name}: the set is empty ({points.shape})")
    if not np.issubdtype(points.dtype, np.number):
        raise UserError(f"{name}: points must be numbers, got dtype {points.dtype}")
    points = points.astype(np.float32)
    if not np.isfinite(points).all():
        raise UserError(f"{name}: {int((~np.isfinite(points)).any(axis=(1, 2)).sum())} clouds hold NaN or infinite "
                        "coordinates; remove or repair them")
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:  # the HDF5 release stores (N, 1)
        labels = labels[:, 0]
    if labels.shape != (len(points),):
        raise UserError(f"{name}: {len(points)} clouds but labels of shape {labels.shape}; give one label per cloud")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.floating) or (labels != np.round(labels)).any():
            raise UserError(f"{name}: labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise UserError(f"{name}: labels must lie in 0..{num_classes - 1} (the dataset's classes); "
                        f"got {labels.min()}..{labels.max()}")
    present = np.unique(labels)
    if len(present) != num_classes:
        missing = sorted(set(range(num_classes)) - set(present.tolist()))
        raise UserError(f"{name}: class-count mismatch: the set has clouds of {len(present)} classes, the dataset "
                        f"{num_classes} (none of class {', '.join(map(str, missing[:5]))}{'...' if len(missing) > 5 else ''})")
    return points, labels
