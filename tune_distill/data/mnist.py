"""MNIST as point clouds: IDX files read with numpy, located, downloaded and verified.

Each digit is binarised at a threshold and every occupied pixel becomes a point ``(0, h, w)`` on
a 1 x 28 x 28 grid, so a digit is a cloud with a variable number of points (the paper's
"point cloud MNIST"). The files are found in ``--data-dir``, else ``$TUNE_DISTILL_DATA``, else a
user cache directory; missing files are downloaded from the usual mirrors when online.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..core.files import file_digest
from ..core.cache import cache_root
from ..core.types import Clouds, Dataset, Domain
from .spec import DatasetSpec

ENV_VAR = "TUNE_DISTILL_DATA"
FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
GRID_SHAPE = (1, 28, 28)
NUM_CLASSES = 10


def default_cache_dir() -> Path:
    return cache_root() / "mnist"


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The folder holding MNIST's four files: the flag, else the environment, else the cache.

    A folder that has an ``mnist/`` subfolder with the files is accepted too, so the flag may
    point at either the MNIST folder or a data root.
    """
    chosen = data_dir if data_dir is not None else os.environ.get(ENV_VAR)
    path = Path(chosen).expanduser() if chosen else default_cache_dir()
    if not _has_any(path) and _has_any(path / "mnist"):
        path = path / "mnist"
    return path


def _has_any(path: Path) -> bool:
    return any((path / name).is_file() for name in FILES)


def md5(path: Path) -> str:
    return file_digest(path, "md5")


def ensure_files(directory: Path, download: bool = True) -> None:
    """Make sure the four files are in ``directory``, downloading and verifying missing ones."""
    missing = [name for name in FILES if not (directory / name).is_file()]
    if not missing:
        return
    failures = []
    if download:
        for name in list(missing):
            error = _download(name, directory)
            if error is None:
                missing.remove(name)
            else:
                failures.append(error)
    if missing:
        why = f" (download failed: {failures[0]})" if failures else ""
        raise UserError(
            f"MNIST files missing in {directory}: {', '.join(missing)}{why}; put them there, or pass "
            f"--data-dir DIR (or set {ENV_VAR}) to a folder that has them"
        )


def _download(name: str, directory: Path) -> str | None:
    """Fetch one file into ``directory`` via a temporary file; returns an error text or None."""
    last = "no mirror answered"
    for mirror in MIRRORS:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=directory, delete=False, suffix=".part") as tmp:
                with urllib.request.urlopen(mirror + name, timeout=30) as response:
                    shutil.copyfileobj(response, tmp)
            if md5(Path(tmp.name)) != FILES[name]:
                os.unlink(tmp.name)
                last = f"{mirror + name} has the wrong md5"
                continue
            os.replace(tmp.name, directory / name)
            return None
        except OSError as exc:  # URLError, timeouts, an unwritable directory
            last = f"{type(exc).__name__}: {exc}"
            if "tmp" in locals() and os.path.exists(tmp.name):
                os.unlink(tmp.name)
    return last


def read_idx(path: Path, expected_md5: str | None = None) -> np.ndarray:
    """Read a gzipped IDX file of unsigned bytes; a bad file is a ``UserError`` naming it."""
    fix = "delete it to download it again, or point --data-dir at a good copy"
    if expected_md5 is not None and md5(path) != expected_md5:
        raise UserError(f"MNIST file {path} is corrupt (md5 mismatch); {fix}")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"MNIST file {path} cannot be decompressed ({exc}); {fix}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"MNIST file {path} is not an IDX file of unsigned bytes; {fix}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"MNIST file {path} is truncated (header); {fix}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - header != int(np.prod(shape)):
        raise UserError(
            f"MNIST file {path} is truncated ({len(raw) - header} data bytes, expected "
            f"{int(np.prod(shape))}); {fix}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_mnist(data_dir: str | os.PathLike | None = None, threshold: int = 75, download: bool = True) -> Dataset:
    """MNIST train (60,000) and test (10,000) digits as point clouds on a 1 x 28 x 28 grid.

    A pixel becomes a point when its value is above ``threshold`` (0..255).
    """
    directory = resolve_data_dir(data_dir)
    ensure_files(directory, download=download)
    arrays = {name: read_idx(directory / name, md5sum) for name, md5sum in FILES.items()}

    def split(prefix: str) -> Clouds:
        images = arrays[f"{prefix}-images-idx3-ubyte.gz"]
        labels = arrays[f"{prefix}-labels-idx1-ubyte.gz"]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise UserError(f"MNIST {prefix} images and labels in {directory} do not match; re-download them")
        grids = (images > threshold)[:, None, :, :]  # add the depth axis: 1 x 28 x 28
        return Clouds.from_occupancy(grids, labels)

    return Dataset(
        name="mnist",
        domain=Domain(len(GRID_SHAPE), GRID_SHAPE),
        num_classes=NUM_CLASSES,
        train=split("train"),
        test=split("t10k"),
        options={"threshold": threshold},
        stratified_val=False,
    )


SPEC = DatasetSpec(
    "mnist", load_mnist, kind="image", evaluator="image", options=("threshold",),
    # A real digit keeps all its points (400 exceeds the 250-point cap): a baseline is the digit itself.
    whole_cloud=400,
    presets={
        # The paper's Minkowski network as its code runs it: 2 layers, IN, max pooling, sum of
        # squares, SGD(0.1, 0.5), uniform init, one fixed random network, 1250 iterations. Its sparse
        # layers had no double backward (MinkowskiEngine), hence second_order=truncated.
        "paper-sparse": dict(
            family="sparse", depth=2, width=128, pooling="max", norm="instance", distance="sum_of_squares",
            lr=0.1, momentum=0.5, init="uniform", points=250, iterations=1250, batch_real=256,
            network="fixed", encoding="features", second_order="truncated",
            eval_models=5, eval_epochs=1000,
        ),
        # The paper's pure-PyTorch network: densified clouds, 3 layers, no norm.
        "paper-dense": dict(
            family="dense", depth=3, width=128, pooling="max", norm="none", distance="sum_of_squares",
            lr=0.1, momentum=0.5, init="uniform", points=250, iterations=1250, batch_real=256,
            network="fixed", encoding="features", eval_models=5, eval_epochs=1000,
        ),
        # About a minute on 2 CPU cores: the project's method (points splatted into the image, a
        # fresh network per iteration, herding init, augmentation, snapping at the end) with a narrow
        # network, small real batches, 100 iterations and a cheaper evaluation (2 x 300 epochs,
        # width 64, 2,000 test digits). configs/ours.yaml is the same method at full size.
        "quick": dict(
            family="dense", depth=3, width=32, pooling="avg", norm="instance", distance="sum_of_squares",
            encoding="splat", init="herding", points=150, network="resample", lr=0.1, momentum=0.5,
            augment=True, snap_final=True, iterations=100, batch_real=32, eval_models=2, eval_epochs=300,
            eval_width=64, eval_test_size=2000, log_every=10,
        ),
    },
)
