"""ModelNet10 and ModelNet40 as point clouds in the unit ball: npy files read, verified, normalised.

Each dataset is a folder of ``{train,test}_points.npy`` ((N, P, 3) float) and
``{train,test}_labels.npy`` ((N,) int64) plus ``class_names.txt``, as in
``../shared/data/modelnet{10,40}_pcd1024/``. Every file is checked against the SHA-256 the project
keeps (a truncated, swapped or corrupt file is one line naming it), every shape is centred on its
mean and scaled so that its farthest point lies on the unit sphere (ModelNet10's raw coordinates
span five orders of magnitude), and coordinates stay float32: point networks see them as they
are, voxel networks through a grid of their own resolution. ModelNet is z-up.

The folder comes from ``--data-dir``, else ``$TUNE_DISTILL_DATA`` (the folder itself or a data root
holding ``modelnet10_pcd1024/``), else the user cache; nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..core.cache import cache_root
from ..core.errors import UserError
from ..core.files import file_digest
from ..core.types import Clouds, Dataset, Domain
from .spec import DatasetSpec

ENV_VAR = "TUNE_DISTILL_DATA"

# SHA-256 of every file each loader reads, as published beside the data (SHA256SUMS).
CHECKSUMS: dict[str, dict[str, str]] = {
    "modelnet10": {
        "class_names.txt": "13deb0202e4519e5340402b428f4318f49a46a0947b7e4cb4766e6e81f055c40",
        "test_labels.npy": "93937abb4b5046400983d40ff20f323676e3d40b7769940d3bd2c143b254eefd",
        "test_points.npy": "841fe92f500be1d3277ef9edcf2a8e73a75ad62769a4c8aa17edd53862ff3904",
        "train_labels.npy": "29c37e34b6e14b4ebcde1130e3315c8675e9df40bcf2c71154840c1b18b17007",
        "train_points.npy": "27e9ee773222a3033f46459fcb47643c84b9d58fafee2eacb16140ccda5f216f",
    },
    "modelnet40": {
        "class_names.txt": "7cf9a7b0d1f39eeb861dc43406947d29c1cd429c2f4ff2530ec153d4b8d83609",
        "test_labels.npy": "2db9a2c7d9fa2cf858da8acc32e024d4586d5205e7bddac0c55fc3fc4e10d3cd",
        "test_points.npy": "596acf14f6d57c3cebc2ddbe86183330b6e361e43f0bc1bb9b50517ef65f03b8",
        "train_labels.npy": "2c1418c7f3b964bbda3b6d713ac69e5758bfcf1ef5b5c845d5c39c5249e68496",
        "train_points.npy": "f71f7bc9e154b27acf45b1c750ad23c03ea015d6245e273cb4347a4416a37576",
    },
}
NUM_CLASSES = {"modelnet10": 10, "modelnet40": 40}
FOLDERS = {"modelnet10": "modelnet10_pcd1024", "modelnet40": "modelnet40_pcd1024"}


def resolve_dir(name: str, data_dir: str | os.PathLike | None) -> Path:
    """The folder holding ``name``'s files: the flag, else the environment, else the cache; a data
    root that holds the dataset's usual folder is accepted too."""
    chosen = data_dir if data_dir is not None else os.environ.get(ENV_VAR)
    path = Path(chosen).expanduser() if chosen else cache_root() / FOLDERS[name]
    if not (path / "train_points.npy").exists() and (path / FOLDERS[name] / "train_points.npy").exists():
        path = path / FOLDERS[name]
    return path


def normalize(points: np.ndarray) -> np.ndarray:
    """Each shape (N, P, 3) centred on its mean and scaled so that its farthest point has norm 1."""
    centred = points - points.mean(axis=1, keepdims=True)
    radius = np.linalg.norm(centred, axis=2).max(axis=1)
    return centred / np.maximum(radius, 1e-12)[:, None, None]


def load_modelnet(name: str, data_dir: str | os.PathLike | None = None, verify: bool = True) -> Dataset:
    """ModelNet10 or ModelNet40 (official splits) as clouds in the unit ball, float32, z-up."""
    directory = resolve_dir(name, data_dir)
    fix = f"point --data-dir at a good copy of {FOLDERS[name]}/ (see its README and SHA256SUMS)"
    for file, expected in CHECKSUMS[name].items():
        path = directory / file
        if not path.is_file():
            raise UserError(f"{name} file {path} not found; {fix}")
        if verify and file_digest(path, "sha256") != expected:
            raise UserError(f"{name} file {path} is corrupt or not the expected file (SHA-256 mismatch); {fix}")
    classes = tuple((directory / "class_names.txt").read_text().split())

    def split(prefix: str) -> Clouds:
        points = np.load(directory / f"{prefix}_points.npy").astype(np.float32)
        labels = np.load(directory / f"{prefix}_labels.npy").astype(np.int64)
        if points.ndim != 3 or points.shape[2] != 3 or points.shape[0] != labels.shape[0]:
            raise UserError(f"{name} {prefix} points {points.shape} and labels {labels.shape} in {directory} "
                            f"do not match; {fix}")
        return clouds_from_arrays(normalize(points), labels)

    return Dataset(name=name, domain=Domain(3, None, up=2), num_classes=NUM_CLASSES[name],
                   train=split("train"), test=split("test"), options={}, class_names=classes)


def clouds_from_arrays(points: np.ndarray | list[np.ndarray], labels: np.ndarray) -> Clouds:
    """Float clouds from one (N, P, 3) array or a list of (P_i, 3) arrays (any sizes)."""
    shapes = list(points)
    counts = np.array([len(p) for p in shapes], dtype=np.int64)
    offsets = np.zeros(len(shapes) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(counts)
    flat = np.concatenate(shapes).astype(np.float32) if shapes else np.zeros((0, 3), np.float32)
    return Clouds(torch.from_numpy(flat), torch.from_numpy(offsets), torch.from_numpy(np.asarray(labels, np.int64)))


def load_modelnet10(data_dir: str | os.PathLike | None = None) -> Dataset:
    return load_modelnet("modelnet10", data_dir)


def load_modelnet40(data_dir: str | os.PathLike | None = None) -> Dataset:
    return load_modelnet("modelnet40", data_dir)


# What every 3D preset shares: distribution matching of PointNet embeddings under a fresh random
# PointNet every iteration, Adam on the coordinates, from herding; clouds of 1,024 points in the
# unit ball. Evaluated by PointNets trained from scratch (docs/protocol-3d.md).
PRESET: dict = dict(
    family="pointnet", encoding="points", depth=3, width=64, pooling="max", norm="none", matching="distribution",
    network="resample", init="herding", points=1024, real_cap=None, optimizer="adam", lr=0.01, momentum=0.0,
    iterations=200, batch_real=32, augment=False, aug_rotate=180.0, aug_scale=0.2, aug_translate=0.05,
    aug_jitter=0.0, eval_models=5, eval_epochs=500, eval_width=32, eval_depth=4, eval_lr=0.001, eval_batch=8,
    eval_augment=True, log_every=10,
)

MODELNET10 = DatasetSpec(
    "modelnet10", load_modelnet10, kind="points", evaluator="point", protocol="modelnet10",
    presets={
        # A run of a few minutes on 2 CPU cores: 2 evaluation models, 100 iterations, 16 real
        # clouds per class.
        "modelnet10-quick": dict(PRESET, dataset="modelnet10", val_size=400, iterations=100, batch_real=16,
                                 eval_models=2, eval_epochs=300),
        # The full protocol: 5 evaluation PointNets; 200 iterations, 32 real clouds per class (chosen
        # on the validation split: docs/results.md, "ModelNet10").
        "modelnet10": dict(PRESET, dataset="modelnet10", val_size=400),
    },
)
MODELNET40 = DatasetSpec("modelnet40", load_modelnet40, kind="points", evaluator="point", protocol="modelnet40",
                         presets={"modelnet40": dict(PRESET, dataset="modelnet40", val_size=984)})
