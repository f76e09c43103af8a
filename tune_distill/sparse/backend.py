"""The interface the sparse distillation network runs on, and its pure-PyTorch implementation.

A backend turns our ``SparseTensor`` into its own representation (``prepare``), runs the layers
with weights in *our* layout ((K, C_in, C_out), dense ``conv3d`` offset order) and returns a
dense tensor at the end, so a network's parameters and outputs do not depend on the backend.
``minkowski.MinkowskiBackend`` implements the same methods on MinkowskiEngine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..core.errors import UserError
from . import ops
from .tensor import SparseTensor

if TYPE_CHECKING:  # get_backend imports it only when it is asked for
    from .minkowski import MinkowskiBackend


class SparseBackend:
    """Our engine. ``truncated=True`` drops the sparse ops' double backward (MinkowskiEngine's autograd)."""

    name = "torch"

    def __init__(self, truncated: bool = False):
        self.truncated = truncated

    def prepare(self, x: SparseTensor) -> SparseTensor:
        return x

    def conv(self, x: SparseTensor, kernel: torch.Tensor, kernel_size: int, stride: int = 1) -> SparseTensor:
        return ops.conv(x, kernel, kernel_size, stride, truncated=self.truncated)

    def instance_norm(self, x: SparseTensor, weight: torch.Tensor, bias: torch.Tensor) -> SparseTensor:
        return ops.instance_norm(x, weight, bias, truncated=self.truncated)

    def relu(self, x: SparseTensor) -> SparseTensor:
        return x.replace(torch.relu(x.feats))

    def max_pool(self, x: SparseTensor, kernel_size: int, stride: int) -> SparseTensor:
        return ops.max_pool(x, kernel_size, stride, truncated=self.truncated)

    def avg_pool(self, x: SparseTensor, kernel_size: int, stride: int) -> SparseTensor:
        return ops.avg_pool(x, kernel_size, stride, truncated=self.truncated)

    def global_pool(self, x: SparseTensor, mode: str = "avg") -> torch.Tensor:
        return ops.global_pool(x, mode, truncated=self.truncated)

    def to_dense(self, x: SparseTensor, shape: tuple[int, ...]) -> torch.Tensor:
        assert ops.dense_shape(x) == tuple(shape), (ops.dense_shape(x), shape)
        return ops.to_dense(x)


def get_backend(name: str, truncated: bool = False) -> SparseBackend | MinkowskiBackend:
    """The backend called ``name``: torch, minkowski, or auto (minkowski when it imports).

    MinkowskiEngine's ops have no double backward, so it can only stand in for a truncated
    torch backend; ``auto`` picks it only then, and asking for it otherwise is an error.
    """
    if name == "torch" or (name == "auto" and not truncated):
        return SparseBackend(truncated)
    from . import minkowski

    if name == "auto" and not minkowski.available():
        return SparseBackend(truncated)
    if not truncated:
        raise UserError("backend=minkowski has no double backward (MinkowskiEngine's ops); "
                        "set second_order=truncated, or use backend=torch")
    return minkowski.MinkowskiBackend()
