"""Sparse tensors with MinkowskiEngine semantics, in pure PyTorch.

A ``SparseTensor`` is a set of occupied cells (integer coordinates with a batch index) and a
feature row per cell. As in MinkowskiEngine, coordinates stay in input-resolution units: a tensor
at stride ``s`` has coordinates that are multiples of ``s``, and a kernel's offsets are scaled by
the stride of its input. Every tensor derived from one input shares a ``CoordinateManager``,
which owns the coordinate set at each stride and caches kernel maps, so a network that convolves
twice at the same stride builds the map once. Rows are always sorted by cell (batch index first).

A kernel map is a pair of neighbour *tables* rather than a list of pairs: ``table[o, j]`` is the
input row that output row o reads through the j-th offset, ``table_t`` the same seen from the
inputs. Operations then run as gathers (``index_select``) and dense GEMMs, never scatters, and a
backward pass is the same kind of gather over the transposed table. Tables are filled by direct
indexing into a dense volume over the cells' bounding box (or, for huge sparse boxes, by binary
search over sorted cell keys): no Python loop over points, the same code on CPU and CUDA.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property

import torch

Stride = tuple[int, ...]
DENSE_LOOKUP_CELLS = 1 << 24  # above this (and 32 cells per point) look cells up by binary search


@dataclass(frozen=True)
class KernelMap:
    """Neighbour tables between an input and an output coordinate set.

    ``table`` (n_out, K'): input row read by each output through offset ``active[j]``, or ``n_in``
    where that cell is empty (a zero "pad" row). Offsets with no pair at all are dropped, so a
    3x3x3 kernel on a flat (depth-1) grid costs 9 columns, not 27. ``table_t`` (n_in, K') is the
    transposed map, built on first use: the output row that reads each input through each offset,
    or ``n_out``. When every input feeds exactly one output (pooling windows that tile the coarse
    grid, a sample's global pool), ``parent`` (n_in,) names it, which is all a pooling backward needs.
    """

    table: torch.Tensor
    active: tuple[int, ...]
    n_in: int
    n_out: int
    parent: torch.Tensor | None = None
    mirrored: bool = False  # stride-1 map with a symmetric kernel: table_t is table, columns reversed
    given_t: torch.Tensor | None = None

    @cached_property
    def table_t(self) -> torch.Tensor:
        if self.given_t is not None:
            return self.given_t
        if self.mirrored:
            # The pairs of offset -d are those of d swapped, and -d is the mirrored column.
            return self.table.flip(1)
        k = self.table.shape[1]
        hit = self.table < self.n_in
        rows = torch.arange(self.n_out, device=self.table.device)[:, None].expand_as(self.table)
        cols = torch.arange(k, device=self.table.device)[None, :].expand_as(self.table)
        table_t = torch.full((self.n_in, k), self.n_out, dtype=torch.long, device=self.table.device)
        table_t[self.table[hit], cols[hit]] = rows[hit]
        return table_t

    @cached_property
    def transposed(self) -> "KernelMap":
        return KernelMap(self.table_t, self.active, self.n_out, self.n_in, mirrored=self.mirrored, given_t=self.table)

    def count(self) -> torch.Tensor:
        """Number of occupied inputs each output reads, (n_out,)."""
        return (self.table < self.n_in).sum(1)

    def segments(self):
        """Yield (offset index, in_idx, out_idx) for every offset with at least one pair."""
        for j, k in enumerate(self.active):
            col = self.table[:, j]
            out = (col < self.n_in).nonzero()[:, 0]
            yield k, col[out], out


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
        self._maps: dict[tuple, KernelMap] = {}
        self._parents: dict[tuple[Stride, Stride], torch.Tensor] = {}

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

    def global_map(self, stride: Stride) -> KernelMap:
        """Each sample's rows as one pooling window: table (batch_size, longest sample), parent = batch."""
        key = ("global", stride)
        if key not in self._maps:
            batch = self._coords[stride][:, 0]
            n, device = batch.shape[0], batch.device
            count = torch.bincount(batch, minlength=self.batch_size)
            width = int(count.max()) if n else 0
            order = torch.argsort(batch, stable=True)  # rows are sorted already; this keeps it general
            start = torch.cumsum(count, 0) - count
            pos = torch.arange(width, device=device)
            slot = torch.where(pos < count[:, None], start[:, None] + pos, n).clamp(max=n)
            table = torch.cat([order, order.new_full((1,), n)])[slot]
            self._maps[key] = KernelMap(table, tuple(range(width)), n, self.batch_size, parent=batch)
        return self._maps[key]

    def kernel_map(self, in_stride: Stride, out_stride: Stride, kernel_size: tuple[int, ...]) -> KernelMap:
        """The map (built once, then cached) of a kernel from ``in_stride`` to ``out_stride``.

        Output o reads input i through offset d when i = o + d * in_stride.
        """
        key = (in_stride, out_stride, kernel_size)
        if key not in self._maps:
            self._maps[key] = self._build(in_stride, out_stride, kernel_size)
        return self._maps[key]

    def _build(self, in_stride: Stride, out_stride: Stride, kernel_size: tuple[int, ...]) -> KernelMap:
        fine, coarse = self._coords[in_stride], self._coords[out_stride]
        n_in, n_out, device = fine.shape[0], coarse.shape[0], fine.device
        step = torch.tensor((1, *in_stride), device=device)
        cells, queries = fine // step, coarse // step  # in units of input cells; column 0 is the batch
        offsets = kernel_offsets(kernel_size, (1,) * len(in_stride), device)
        lo_c, hi_c, lo_q, hi_q = (t.tolist() for t in (cells.amin(0), cells.amax(0), queries.amin(0), queries.amax(0)))
        # Keep only offsets that can reach an input from some output (on a flat grid, the in-plane ones).
        reach = [all(lq + d <= hc and hq + d >= lc for d, lq, hq, lc, hc in zip(off, lo_q[1:], hi_q[1:], lo_c[1:], hi_c[1:]))
                 for off in offsets.tolist()]
        keep = [k for k, r in enumerate(reach) if r]
        offsets = offsets[keep]
        # Bounding box of the inputs and of every query (output + kept offset), batch axis first.
        d_lo = offsets.amin(0).tolist() if keep else [0] * len(in_stride)
        d_hi = offsets.amax(0).tolist() if keep else [0] * len(in_stride)
        lo = [min(lc, lq + d) for lc, lq, d in zip(lo_c, lo_q, [0, *d_lo])]
        hi = [max(hc, hq + d) for hc, hq, d in zip(hi_c, hi_q, [0, *d_hi])]
        extent = [h - low + 1 for low, h in zip(lo, hi)]
        if math.prod(extent) <= max(DENSE_LOOKUP_CELLS, 32 * n_in):
            # Row of every cell of the bounding box (n_in where empty): a query is one gather.
            lo_t = torch.tensor(lo, device=device)
            mult = torch.tensor([math.prod(extent[i + 1 :]) for i in range(len(extent))], device=device)
            volume = torch.full((math.prod(extent),), n_in, dtype=torch.long, device=device)
            volume[((cells - lo_t) * mult).sum(1)] = torch.arange(n_in, device=device)
            shift = (offsets * mult[1:]).sum(1)
            table = volume[((queries - lo_t) * mult).sum(1)[:, None] + shift[None, :]]
        else:
            batch_col = torch.zeros(offsets.shape[0], 1, dtype=torch.long, device=device)
            found = _Hash(cells).lookup(queries[None, :, :] + torch.cat([batch_col, offsets], 1)[:, None, :]).T
            table = torch.where(found >= 0, found, torch.full_like(found, n_in))
        used = (table < n_in).any(0).tolist()
        if not all(used):
            table = table[:, used]
            keep = [k for k, u in zip(keep, used) if u]
        tiles = all(o == i * k and (k % 2 == 0 or k == 1) for i, o, k in zip(in_stride, out_stride, kernel_size))
        parent = self._parents.get((in_stride, out_stride)) if tiles else None
        mirrored = (in_stride == out_stride and all(k % 2 for k in kernel_size)
                    and keep == [len(reach) - 1 - k for k in reversed(keep)])
        return KernelMap(table, tuple(keep), n_in, n_out, parent, mirrored)


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
