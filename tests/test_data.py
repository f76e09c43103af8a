"""The MNIST loader and point-cloud conversion, on the real files."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import torch

from tune_distill.data import load_dataset, voxelize
from tune_distill.data.mnist import FILES, ENV_VAR, read_idx, resolve_data_dir
from tune_distill.core.errors import UserError

# The official MNIST class frequencies.
TRAIN_PER_CLASS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_PER_CLASS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_counts_and_classes(mnist):
    assert len(mnist.train) == 60000 and len(mnist.test) == 10000
    assert torch.bincount(mnist.train.labels).tolist() == TRAIN_PER_CLASS
    assert torch.bincount(mnist.test.labels).tolist() == TEST_PER_CLASS
    assert mnist.domain.grid_shape == (1, 28, 28) and mnist.num_classes == 10


def test_clouds_are_the_thresholded_pixels(mnist, mnist_dir):
    images = read_idx(resolve_data_dir(mnist_dir) / "t10k-images-idx3-ubyte.gz")
    for i in (0, 1, 4321, 9999):
        cloud = mnist.test.batch(torch.tensor([i])).points
        assert (cloud[:, 0] == 0).all()  # the depth axis
        expected = np.argwhere(images[i] > 75)  # raster order, (h, w)
        np.testing.assert_array_equal(cloud[:, 1:].numpy(), expected)


def test_cap_keeps_the_first_points(mnist):
    idx = torch.argmax(mnist.train.counts)  # the largest digit (> 250 points)
    full = mnist.train.batch(idx[None]).points
    capped = mnist.train.batch(idx[None], cap=250).points
    assert full.shape[0] > 250 and capped.shape[0] == 250
    assert torch.equal(capped, full[:250])


def test_render_round_trips(mnist, mnist_dir):
    images = read_idx(resolve_data_dir(mnist_dir) / "t10k-images-idx3-ubyte.gz")
    grids = voxelize(mnist.test.batch(torch.arange(50)), mnist.domain.grid_shape)
    assert torch.equal(grids[:, 0].bool(), torch.from_numpy(images[:50] > 75))


def _copy(src, dst):
    dst.mkdir()
    for name in FILES:
        shutil.copy(src / name, dst / name)
    return dst


def test_corrupt_file_names_the_file(tmp_path, mnist_dir):
    d = _copy(resolve_data_dir(mnist_dir), tmp_path / "m")
    target = d / "train-labels-idx1-ubyte.gz"
    raw = bytearray(target.read_bytes())
    raw[100] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz.*md5"):
        load_dataset("mnist", d)


def test_truncated_file_is_a_clear_error(tmp_path, mnist_dir):
    src = resolve_data_dir(mnist_dir) / "t10k-labels-idx1-ubyte.gz"
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(src) as f:
        data = f.read()
    bad.write_bytes(gzip.compress(data[:-10]))  # a valid gzip of a short IDX payload
    with pytest.raises(UserError, match="truncated"):
        read_idx(bad)
    bad.write_bytes(src.read_bytes()[:2000])  # a cut gzip stream
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz"):
        read_idx(bad)


def test_missing_files_offline_name_files_and_flag(tmp_path):
    with pytest.raises(UserError) as err:
        from tune_distill.data.mnist import load_mnist

        load_mnist(tmp_path, download=False)
    message = str(err.value)
    assert "train-images-idx3-ubyte.gz" in message and "--data-dir" in message and "\n" not in message


def test_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "from_env"))
    assert resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_data_dir(None) == tmp_path / "from_env"
    monkeypatch.delenv(ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_data_dir(None) == tmp_path / "cache" / "tune_distill" / "mnist"


def test_unknown_dataset():
    with pytest.raises(UserError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")
