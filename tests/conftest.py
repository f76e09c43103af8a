"""Shared fixtures: the real MNIST files (../shared/data/mnist or $TUNE_DISTILL_DATA) and ModelNet10
files, loaded once, and the devices to run device tests on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def mnist_path() -> Path:
    env = os.environ.get("TUNE_DISTILL_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path | None:
    """The MNIST folder beside the repo, or None to let the loader find (or download) the files.

    Never a skip: a test session without MNIST fails with the loader's one-line error.
    """
    path = mnist_path()
    return path if path.exists() else None


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    from tune_distill.data import load_dataset

    return load_dataset("mnist", mnist_dir)


@pytest.fixture(scope="session")
def modelnet10():
    """The real ModelNet10 files beside the repo (../shared/data/modelnet10_pcd1024), loaded once."""
    from tune_distill.data import load_dataset

    return load_dataset("modelnet10", REPO.parent / "shared" / "data" / "modelnet10_pcd1024")


@pytest.fixture(params=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def device(request) -> str:
    """Each device a test should run on: the CPU always, CUDA where there is one."""
    return request.param


@pytest.fixture(autouse=True)
def _two_threads():
    # Tests run on a 2-core CI machine; keep torch from oversubscribing it.
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster for the whole test session (2 CPUs, no dashboard).

    Yields its GCS address, so drivers started as subprocesses (``--address``) join the same
    cluster instead of starting another one. ``RAY_TMPDIR`` points at a fresh short folder:
    Ray's socket paths have a length limit, and test runs must not share Ray's temp files.
    """
    import shutil
    import tempfile

    import ray

    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    previous = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = ray_tmp
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()
        if previous is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = previous
        shutil.rmtree(ray_tmp, ignore_errors=True)
