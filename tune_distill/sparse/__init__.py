"""A sparse tensor engine in pure PyTorch with MinkowskiEngine's semantics.

``tensor`` holds the data structure and kernel maps, ``ops`` the differentiable operations,
``backend`` the interface a network runs on, and ``minkowski`` the same interface on
MinkowskiEngine (optional; imported only when asked for).
"""

from .ops import avg_pool, conv, dense_shape, global_pool, instance_norm, max_pool, to_dense
from .tensor import CoordinateManager, KernelMap, SparseTensor, unique_cells

__all__ = [
    "CoordinateManager", "KernelMap", "SparseTensor", "unique_cells",
    "avg_pool", "conv", "dense_shape", "global_pool", "instance_norm", "max_pool", "to_dense",
]
