"""MinkowskiEngine backend (optional): the ``SparseBackend`` interface on MinkowskiEngine 0.5.4.

MinkowskiEngine is imported lazily and only here, so the package works without it. Its 0.5.4
release still does ``from collections import Sequence``, which Python 3.10 removed; we alias
the old names to ``collections.abc`` before importing it instead of patching its files.

The network keeps its weights in our layout ((K, C_in, C_out), offsets in the C order of a dense
``conv3d`` weight's spatial axes). MinkowskiEngine enumerates a kernel's offsets with the *first*
axis varying fastest, i.e. the spatial axes reversed; ``to_minkowski_kernel`` and
``from_minkowski_kernel`` convert between the two (a differentiable permutation).

Every MinkowskiEngine op is a custom autograd function whose backward is not differentiable, so
this backend is always "truncated": it matches ``SparseBackend(truncated=True)``.
"""

from __future__ import annotations

import collections
import collections.abc
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ..core.errors import UserError
from .tensor import SparseTensor

INSTALL_HINT = "install it with: python scripts/install_minkowski.py"


def _import_me():
    """Import MinkowskiEngine (Python caches the module after the first call)."""
    for name in ("Sequence", "Mapping", "MutableMapping", "Iterable", "Callable"):
        # Python >= 3.10 dropped these aliases; MinkowskiEngine 0.5.4 still imports them.
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    with warnings.catch_warnings():
        # "compiled with CPU_ONLY flag": expected for a CPU build, not worth a warning per run.
        warnings.simplefilter("ignore", UserWarning)
        import MinkowskiEngine as ME
    return ME


def import_error() -> str | None:
    """Why MinkowskiEngine does not import here, or None when it does."""
    try:
        _import_me()
    except Exception as exc:  # ImportError, or OSError from a shared library built for another torch
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def available() -> bool:
    """True when MinkowskiEngine imports."""
    return import_error() is None


def _perm(kernel: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    d = len(sizes)
    grid = kernel.reshape(*sizes, *kernel.shape[1:])
    return grid.permute(*range(d - 1, -1, -1), d, d + 1).reshape(kernel.shape)


def to_minkowski_kernel(kernel: torch.Tensor, kernel_size: tuple[int, ...]) -> torch.Tensor:
    """Our (K, C_in, C_out) kernel (C-order offsets) as MinkowskiEngine's (first axis fastest)."""
    return _perm(kernel, tuple(kernel_size))


def from_minkowski_kernel(kernel: torch.Tensor, kernel_size: tuple[int, ...]) -> torch.Tensor:
    """MinkowskiEngine's (K, C_in, C_out) kernel in our layout (inverse of ``to_minkowski_kernel``)."""
    return _perm(kernel, tuple(reversed(kernel_size)))


@dataclass(frozen=True)
class MinkowskiTensor:
    """A MinkowskiEngine sparse tensor plus the batch size it cannot know (trailing empty clouds)."""

    st: Any  # MinkowskiEngine.SparseTensor
    batch_size: int


class MinkowskiBackend:
    """The sparse network's layers on MinkowskiEngine; weights stay in our layout."""

    name = "minkowski"
    truncated = True  # MinkowskiEngine has no double backward

    def __init__(self):
        error = import_error()
        if error is not None:
            raise UserError(f"backend=minkowski needs MinkowskiEngine, which does not import ({error}); {INSTALL_HINT}")
        self.me = _import_me()
        from MinkowskiEngineBackend._C import ConvolutionMode

        self._conv_mode = ConvolutionMode.DEFAULT
        self._kernels: dict[tuple, Any] = {}  # KernelGenerator per (size, stride, dim)

    def _generator(self, kernel_size, stride, d: int):
        ks = (kernel_size,) * d if isinstance(kernel_size, int) else tuple(kernel_size)
        st = (stride,) * d if isinstance(stride, int) else tuple(stride)
        key = (ks, st, d)
        if key not in self._kernels:
            self._kernels[key] = self.me.KernelGenerator(kernel_size=ks, stride=st, dilation=1, dimension=d)
        return ks, self._kernels[key]

    def _new(self, x: MinkowskiTensor, feats: torch.Tensor, key=None) -> MinkowskiTensor:
        """Features on ``x``'s manager, at coordinate map ``key`` (default: ``x``'s own cells)."""
        key = x.st.coordinate_map_key if key is None else key
        st = self.me.SparseTensor(feats, coordinate_map_key=key, coordinate_manager=x.st.coordinate_manager)
        return MinkowskiTensor(st, x.batch_size)

    def prepare(self, x: SparseTensor) -> MinkowskiTensor:
        """Our quantised cells as a MinkowskiEngine tensor: same rows, same order (cells are unique)."""
        coords = x.coords.int()
        # Its manager calls omp_set_num_threads(cpu_count) unless told a count, which would
        # silently change torch's thread count for the whole process: pass torch's own.
        kind = self.me.CoordinateMapType.CUDA if coords.is_cuda else self.me.CoordinateMapType.CPU
        manager = self.me.CoordinateManager(D=coords.shape[1] - 1, num_threads=torch.get_num_threads(),
                                            coordinate_map_type=kind)
        st = self.me.SparseTensor(x.feats, coordinates=coords, coordinate_manager=manager)
        return MinkowskiTensor(st, x.batch_size)

    def conv(self, x: MinkowskiTensor, kernel: torch.Tensor, kernel_size: int, stride: int = 1) -> MinkowskiTensor:
        ks, gen = self._generator(kernel_size, stride, x.st.D)
        out_key = self.me.CoordinateMapKey(x.st.D + 1)
        feats = self.me.MinkowskiConvolutionFunction.apply(
            x.st.F, to_minkowski_kernel(kernel, ks), gen, self._conv_mode, x.st.coordinate_map_key, out_key,
            x.st.coordinate_manager,
        )
        return self._new(x, feats, out_key)

    def instance_norm(self, x: MinkowskiTensor, weight: torch.Tensor, bias: torch.Tensor) -> MinkowskiTensor:
        # MinkowskiInstanceNorm's own function (variance eps 1e-8), then the affine in plain torch.
        normed = self.me.MinkowskiInstanceNormFunction.apply(x.st.F, x.st.coordinate_map_key, None,
                                                             x.st.coordinate_manager)
        return self._new(x, normed * weight + bias)

    def relu(self, x: MinkowskiTensor) -> MinkowskiTensor:
        return self._new(x, torch.relu(x.st.F))

    def _pool(self, x: MinkowskiTensor, mode, kernel_size, stride) -> MinkowskiTensor:
        _, gen = self._generator(kernel_size, stride, x.st.D)
        out_key = self.me.CoordinateMapKey(x.st.D + 1)
        feats = self.me.MinkowskiLocalPoolingFunction.apply(
            x.st.F, mode, gen, x.st.coordinate_map_key, out_key, x.st.coordinate_manager
        )
        return self._new(x, feats, out_key)

    def max_pool(self, x: MinkowskiTensor, kernel_size: int, stride: int) -> MinkowskiTensor:
        return self._pool(x, self.me.PoolingMode.LOCAL_MAX_POOLING, kernel_size, stride)

    def avg_pool(self, x: MinkowskiTensor, kernel_size: int, stride: int) -> MinkowskiTensor:
        # LOCAL_AVG_POOLING divides by the number of *occupied* cells in the window, as ours does.
        return self._pool(x, self.me.PoolingMode.LOCAL_AVG_POOLING, kernel_size, stride)

    def global_pool(self, x: MinkowskiTensor, mode: str = "avg") -> torch.Tensor:
        """(batch_size, C), rows in batch order (MinkowskiEngine's output rows are not sorted)."""
        modes = {"avg": "GLOBAL_AVG_POOLING_PYTORCH_INDEX", "sum": "GLOBAL_SUM_POOLING_PYTORCH_INDEX",
                 "max": "GLOBAL_MAX_POOLING_PYTORCH_INDEX"}
        out_key = self.me.CoordinateMapKey(x.st.D + 1)
        feats = self.me.MinkowskiGlobalPoolingFunction.apply(
            x.st.F, getattr(self.me.PoolingMode, modes[mode]), x.st.coordinate_map_key, out_key,
            x.st.coordinate_manager,
        )
        batch = x.st.coordinate_manager.get_coordinates(out_key)[:, 0].long().to(feats.device)
        return feats.new_zeros(x.batch_size, feats.shape[1]).index_copy(0, batch, feats)

    def to_dense(self, x: MinkowskiTensor, shape: tuple[int, ...]) -> torch.Tensor:
        """(batch_size, C, *shape): what ``SparseTensor.dense`` does, without its CPU-only min_coordinate."""
        coords = x.st.C.long()
        stride = torch.tensor(x.st.tensor_stride, device=coords.device)
        cells = torch.div(coords[:, 1:], stride, rounding_mode="floor")
        grid = x.st.F.new_zeros((x.batch_size, *shape, x.st.F.shape[1]))
        grid = grid.index_put((coords[:, 0], *cells.unbind(1)), x.st.F)
        return grid.movedim(-1, 1)
