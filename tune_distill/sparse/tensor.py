"""Sparse tensors with MinkowskiEngine semantics, in pure PyTorch.

A ``SparseTensor`` is a set of occupied cells (integer coordinates with a batch index) and a
feature row per cell. As in MinkowskiEngine, coordinates stay in input-resolution units: a tensor
at stride ``s`` has coordinates that are multiples of ``s``, and a kernel's offsets are scaled by
the stride of its input. Every tensor derived from one input shares a ``CoordinateManager``,
which owns the coordinate set at each stride and caches kernel maps, so a network that convolves
twice at the same stride builds the map once.

Kernel maps are built by hashing coordinates to int64 keys, sorting the keys once and looking up
each offset's neighbours with ``searchsorted``: no Python loop over points, the same code on CPU
and CUDA.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

Stride = tuple[int, ...]


@dataclass(frozen=True)
class KernelMap:
    """For each kernel offset k, pairs (in_idx[j], out_idx[j]) for j in the k-th segment.

    ``sizes[k]`` is the length of offset k's segment (a Python list, to split without syncing).
    """

    in_idx: torch.Tensor
    out_idx: torch.Tensor
    sizes: list[int]

    def segments(self):
        """Yield (offset index, in_idx, out_idx) for every offset with at least one pair."""
        start = 0
        for k, n in enumerate(self.sizes):
            if n:
                yield k, self.in_idx[start : start + n], self.out_idx[start : start + n]
            start += n


def kernel_offsets(kernel_size: tuple[int, ...], stride: Stride, device: torch.device) -> torch.Tensor:
    """MinkowskiEngine's hyper-cube region: (K, D) offsets in input-resolution units.

    Odd sizes are centred ({-k//2 .. k//2}), even sizes start at the output cell ({0 .. k-1}).
    Offsets are enumerated in C order, the order of a dense ``conv3d`` weight's spatial axes.
    """
    axes = []
    for k, s in zip(kernel_size, stride):
        first = -(k // 2) if k % 2 else 0
        axes.append([(first + i) * s for i in range(k)])
    return torch.tensor(list(itertools.product(*axes)), dtype=torch.long, device=device).reshape(-1, len(stride))


class _Hash:
    """Maps coordinate rows (batch, x_1..x_D) to unique int64 keys; looks rows up."""

    def __init__(self, coords: torch.Tensor):
        self.lo = coords.min(0).values
        self.hi = coords.max(0).values
        span = self.hi - self.lo + 1
        # Mixed-radix weights: key = sum_i (c_i - lo_i) * prod_{j > i} span_j.
        mult = torch.ones_like(span)
        for i in range(span.numel() - 2, -1, -1):
            mult[i] = mult[i + 1] * span[i + 1]
        self.mult = mult
        self.sorted_keys, self.order = self.key(coords).sort()

    def key(self, coords: torch.Tensor) -> torch.Tensor:
        return ((coords - self.lo) * self.mult).sum(-1)

    def lookup(self, queries: torch.Tensor) -> torch.Tensor:
        """Row index of each query in the hashed set, or -1 where absent. Queries (..., 1+D)."""
        inside = ((queries >= self.lo) & (queries <= self.hi)).all(-1)
        keys = self.key(torch.where(inside[..., None], queries, self.lo))
        pos = torch.searchsorted(self.sorted_keys, keys).clamp(max=self.sorted_keys.numel() - 1)
        found = inside & (self.sorted_keys[pos] == keys)
        return torch.where(found, self.order[pos], torch.full_like(pos, -1))


def unique_cells(cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique rows of an int64 (M, 1+D) tensor, sorted, and the inverse index (M,)."""
    h = _Hash(cells)
    keys, inverse = torch.unique(h.key(cells), sorted=True, return_inverse=True)
    # Decode the sorted keys back to rows: invert the mixed-radix encoding.
    rows = []
    rem = keys
    for i in range(cells.shape[1]):
        rows.append(rem // h.mult[i] + h.lo[i])
        rem = rem % h.mult[i]
    return torch.stack(rows, 1), inverse


class CoordinateManager:
    """Owns the coordinate sets of one input at every stride and caches kernel maps.

    Created once per input batch; never shared between batches, so the cache cannot go stale.
    """

    def __init__(self, coords: torch.Tensor, spatial_shape: tuple[int, ...], batch_size: int):
        d = len(spatial_shape)
        self.spatial_shape = tuple(spatial_shape)
        self.batch_size = batch_size
        self._coords: dict[Stride, torch.Tensor] = {(1,) * d: coords}
        self._hashes: dict[Stride, _Hash] = {}
        self._maps: dict[tuple, KernelMap] = {}
        self._parents: dict[Stride, torch.Tensor] = {}

    def coords(self, stride: Stride) -> torch.Tensor:
        return self._coords[stride]

    def downsample(self, stride: Stride, factor: Stride) -> Stride:
        """Create (once) the coordinates at ``stride * factor``: floor each cell to the coarser grid."""
        out = tuple(s * f for s, f in zip(stride, factor))
        if out not in self._coords:
            fine = self._coords[stride]
            step = torch.tensor((1, *out), device=fine.device)
            coarse, parent = unique_cells(torch.div(fine, step, rounding_mode="floor") * step)
            self._coords[out] = coarse
            self._parents[(stride, out)] = parent
        return out

    def _hash(self, stride: Stride) -> _Hash:
        if stride not in self._hashes:
            self._hashes[stride] = _Hash(self._coords[stride])
        return self._hashes[stride]

    def kernel_map(
        self, in_stride: Stride, out_stride: Stride, kernel_size: tuple[int, ...], per_offset: bool = True
    ) -> KernelMap:
        """Pairs (input row, output row) per offset: input = output + offset * in_stride.

        ``per_offset=False`` lets pooling, which treats all offsets alike, get the pairs as one
        segment (cheaper when the kernel tiles the coarse grid).
        """
        key = (in_stride, out_stride, kernel_size, per_offset)
        if key not in self._maps:
            self._maps[key] = self._build(in_stride, out_stride, kernel_size, per_offset)
        return self._maps[key]

    def _build(
        self, in_stride: Stride, out_stride: Stride, kernel_size: tuple[int, ...], per_offset: bool
    ) -> KernelMap:
        out_coords = self._coords[out_stride]
        device = out_coords.device
        tiles = all(o == i * k and (k % 2 == 0 or k == 1) for i, o, k in zip(in_stride, out_stride, kernel_size))
        if tiles and not per_offset and (in_stride, out_stride) in self._parents:
            # Non-overlapping even kernels tile the coarse grid: every input cell has exactly one
            # output, the parent found while downsampling. One segment holds all pairs.
            parent = self._parents[(in_stride, out_stride)]
            return KernelMap(torch.arange(parent.numel(), device=device), parent, [parent.numel()])
        offsets = kernel_offsets(kernel_size, in_stride, device)
        k = offsets.shape[0]
        same = in_stride == out_stride and all(s % 2 for s in kernel_size)
        # On a stride-1 map the offset -d's pairs are offset d's pairs swapped, and offsets are
        # enumerated so that -d sits at index K-1-k: look up only the first half.
        half = k // 2 if same else k
        pad = torch.zeros(half, 1, dtype=torch.long, device=device)
        queries = out_coords[None, :, :] + torch.cat([pad, offsets[:half]], 1)[:, None, :]
        found = self._hash(in_stride).lookup(queries)  # (half, n_out)
        hit = found >= 0
        sizes = hit.sum(1).tolist()
        out_idx = hit.nonzero()[:, 1]
        in_idx = found[hit]
        if same:
            n = out_coords.shape[0]
            centre = torch.arange(n, device=device)
            ends = list(itertools.accumulate(sizes, initial=0))
            mirrored = range(half - 1, -1, -1)
            seg = [slice(ends[j], ends[j + 1]) for j in mirrored]
            in_idx, out_idx = (
                torch.cat([in_idx, centre, *(out_idx[s] for s in seg)]),
                torch.cat([out_idx, centre, *(in_idx[s] for s in seg)]),
            )
            sizes = sizes + [n] + [sizes[j] for j in mirrored]
        return KernelMap(in_idx, out_idx, sizes)


@dataclass(frozen=True)
class SparseTensor:
    """Occupied cells and their features: ``feats`` (N, C) rows aligned with ``coords`` (N, 1+D).

    ``coords[:, 0]`` is the batch index; the spatial coordinates are multiples of ``stride``.
    """

    feats: torch.Tensor
    stride: Stride
    manager: CoordinateManager

    @property
    def coords(self) -> torch.Tensor:
        return self.manager.coords(self.stride)

    @property
    def batch_size(self) -> int:
        return self.manager.batch_size

    def replace(self, feats: torch.Tensor) -> "SparseTensor":
        """The same cells with new features (element-wise ops such as ReLU)."""
        return SparseTensor(feats, self.stride, self.manager)

    @staticmethod
    def from_points(
        points: torch.Tensor,
        batch: torch.Tensor,
        feats: torch.Tensor,
        batch_size: int,
        spatial_shape: tuple[int, ...],
    ) -> "SparseTensor":
        """Quantise points to cells (rounding) and average the features of points sharing a cell.

        Averaging (MinkowskiEngine's UNWEIGHTED_AVERAGE mode) keeps every point's features in
        the graph, so each point receives a gradient even when several share a cell.
        """
        hi = torch.tensor(spatial_shape, device=points.device) - 1
        cells = torch.minimum(points.detach().round().clamp(min=0), hi).long()
        coords, inverse = unique_cells(torch.cat([batch[:, None], cells], 1))
        n = coords.shape[0]
        summed = feats.new_zeros(n, feats.shape[1]).index_add(0, inverse, feats)
        count = torch.bincount(inverse, minlength=n).to(feats.dtype)
        manager = CoordinateManager(coords, spatial_shape, batch_size)
        return SparseTensor(summed / count[:, None], (1,) * len(spatial_shape), manager)
