"""Sparse tensors with MinkowskiEngine semantics, in pure PyTorch.

A ``SparseTensor`` is a set of occupied cells (integer coordinates with a batch index) and a
feature row per cell. As in MinkowskiEngine, coordinates stay in input-resolution units: a tensor
at stride ``s`` has coordinates that are multiples of ``s``, and a kernel's offsets are scaled by
the stride of its input. Every tensor derived from one input shares a ``CoordinateManager``,
which owns the coordinate set at each stride and caches kernel maps, so a network that convolves
twice at the same stride builds the map once. The coordinate sets it builds are sorted by cell
(batch index first).

A kernel map is a pair of neighbour *tables* rather than a list of pairs: ``table[o, j]`` is the
input row that output row o reads through the j-th offset, ``table_t`` the same seen from the
inputs. Operations then run as gathers (``index_select``) and dense GEMMs, and a backward pass is
the same kind of gather over the transposed table. Tables are filled by direct indexing into a
dense volume over the cells' bounding box (or, for huge sparse boxes, by binary search over
sorted cell keys): no Python loop over points, the same code on CPU and CUDA. Maps in which every
input has a single output (tiling pooling windows, a sample's pool) are ``ParentMap``s, which an
average needs nothing more of than the parent of each row.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Callable, Iterator

import torch

Stride = tuple[int, ...]
DENSE_LOOKUP_CELLS = 1 << 24  # above this (and 32 cells per point) look cells up by binary search


class KernelMap:
    """Neighbour tables between an input and an output coordinate set.

    ``table`` (n_out, K'): input row read by each output through offset ``active[j]``, or ``n_in``
    where that cell is empty (a zero "pad" row). Offsets with no pair at all are dropped, so a
    3x3x3 kernel on a flat (depth-1) grid costs 9 columns, not 27. ``table_t`` (n_in, K') is the
    transposed map, built on first use: the output row that reads each input through each offset,
    or ``n_out``. When every input feeds exactly one output (pooling windows that tile the coarse
    grid, a sample's global pool), ``parent`` (n_in,) names it and ``slot`` (n_in,) the column
    through which it is read: all that a pooling backward needs.
    """

    def __init__(self, table: torch.Tensor, active: tuple[int, ...], n_in: int, n_out: int, *,
                 parent: torch.Tensor | None = None, slot: torch.Tensor | None = None,
                 mirrored: bool = False, table_t: torch.Tensor | None = None):
        self.table, self.active, self.n_in, self.n_out = table, active, n_in, n_out
        self.parent, self.slot = parent, slot
        self.mirrored = mirrored  # stride-1 map, symmetric kernel: table_t is table, columns reversed
        self._table_t = table_t
        self._inv: dict[torch.dtype, torch.Tensor] = {}

    @cached_property
    def table_t(self) -> torch.Tensor:
        if self._table_t is not None:
            return self._table_t
        if self.mirrored:
            # The pairs of offset -d are those of d swapped, and -d is the mirrored column.
            return self.table.flip(1)
        table, k = self.table, self.table.shape[1]
        hit = table < self.n_in
        rows = torch.arange(self.n_out, device=table.device)[:, None].expand_as(table)
        cols = torch.arange(k, device=table.device)[None, :].expand_as(table)
        table_t = torch.full((self.n_in, k), self.n_out, dtype=torch.long, device=table.device)
        table_t[table[hit], cols[hit]] = rows[hit]
        return table_t

    @cached_property
    def transposed(self) -> "KernelMap":
        return KernelMap(self.table_t, self.active, self.n_out, self.n_in, mirrored=self.mirrored, table_t=self.table)

    @cached_property
    def columns(self) -> torch.Tensor:
        """The table column by column, (K', n_out), each contiguous."""
        return self.table.T.contiguous()

    @cached_property
    def counts(self) -> torch.Tensor:
        """Number of occupied inputs each output reads, (n_out,)."""
        if self.parent is not None:
            return torch.bincount(self.parent, minlength=self.n_out)
        return (self.table < self.n_in).sum(1)

    def inv_counts(self, dtype: torch.dtype) -> torch.Tensor:
        """1 / max(1, counts) as a (n_out, 1) column of ``dtype`` (what a mean divides by)."""
        if dtype not in self._inv:
            self._inv[dtype] = 1.0 / self.counts.clamp(min=1).to(dtype)[:, None]
        return self._inv[dtype]

    def segments(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Yield (offset index, in_idx, out_idx) for every offset with at least one pair."""
        for j, k in enumerate(self.active):
            col = self.table[:, j]
            out = (col < self.n_in).nonzero()[:, 0]
            yield k, col[out], out


class ParentMap(KernelMap):
    """A map in which every input feeds exactly one output, its ``parent``: pooling windows that
    tile the coarse grid, or each sample's global pool.

    Average pooling needs only the parent. The slots (each input's column), the used columns and
    the table come from ``slots()`` on first use (max pooling, a strided convolution).
    """

    def __init__(self, parent: torch.Tensor, n_out: int,
                 slots: Callable[[], tuple[tuple[int, ...], torch.Tensor]] | None = None):
        self.parent, self.n_in, self.n_out, self._make_slots = parent, parent.shape[0], n_out, slots
        self.mirrored, self._table_t, self._inv = False, None, {}

    @cached_property
    def order(self) -> torch.Tensor | None:
        """The rows sorted by parent, or None when they already are (rows sorted by cell are)."""
        p = self.parent
        if p.numel() < 2 or bool((p[1:] >= p[:-1]).all()):
            return None
        return torch.argsort(p, stable=True)

    def sum_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Each output's sum of its rows, (n_out, C) (first-order differentiable only)."""
        if rows.device.type != "cpu" or torch.get_num_threads() == 1:
            return rows.new_zeros(self.n_out, rows.shape[1]).index_add_(0, self.parent, rows)
        # With several threads, torch's CPU scatter-add opens parallel regions even for tiny
        # inputs, which cost milliseconds each when the cores are shared: sum sorted segments.
        if self.order is not None:
            rows = rows.index_select(0, self.order)
        return torch.segment_reduce(rows, "sum", lengths=self.counts)

    @cached_property
    def _slots(self) -> tuple[tuple[int, ...], torch.Tensor]:
        assert self._make_slots is not None, "this map has no windows"
        return self._make_slots()

    @property
    def active(self) -> tuple[int, ...]:  # type: ignore[override]
        return self._slots[0]

    @property
    def slot(self) -> torch.Tensor:  # type: ignore[override]
        return self._slots[1]

    @cached_property
    def table(self) -> torch.Tensor:  # type: ignore[override]
        width = len(self.active)
        table = torch.full((self.n_out * width,), self.n_in, dtype=torch.long, device=self.parent.device)
        table[self.parent * width + self.slot] = torch.arange(self.n_in, device=self.parent.device)
        return table.view(self.n_out, width)


def _window_slots(cells: torch.Tensor, kernel_size: tuple[int, ...]) -> tuple[tuple[int, ...], torch.Tensor]:
    """Slots of cells (in input-cell units) in windows of ``kernel_size`` that start at the coarse
    cell: C-order position inside the window, keeping (and renumbering) only the slots that occur."""
    device = cells.device
    slot = ((cells % torch.tensor(kernel_size, device=device)) * torch.tensor(_radix(list(kernel_size)), device=device)).sum(1)
    k = math.prod(kernel_size)
    active = [j for j, n in enumerate(torch.bincount(slot, minlength=k).tolist()) if n]
    if len(active) < k:  # on a flat grid, half of a 2x2x2 window never occurs
        column = [-1] * k
        for c, j in enumerate(active):
            column[j] = c
        slot = torch.tensor(column, device=device)[slot]
    return tuple(active), slot


def _sample_slots(batch: torch.Tensor, count: torch.Tensor) -> tuple[tuple[int, ...], torch.Tensor]:
    """Each row's position among its sample's rows (in row order)."""
    order = torch.argsort(batch, stable=True)  # rows are sorted by sample already; this keeps it general
    start = torch.cumsum(count, 0) - count
    slot = torch.empty_like(batch)
    slot[order] = torch.arange(batch.shape[0], device=batch.device) - start[batch[order]]
    return tuple(range(int(count.max()) if batch.numel() else 0)), slot


def _axis_offsets(kernel_size: tuple[int, ...]) -> list[range]:
    """MinkowskiEngine's hyper-cube region, per axis in cells: odd sizes centred, even from 0."""
    return [range(-(k // 2), k // 2 + 1) if k % 2 else range(k) for k in kernel_size]


def _radix(extent: list[int]) -> list[int]:
    """Mixed-radix weights: a row's key is sum_i (c_i - lo_i) * prod_{j > i} extent_j."""
    return [math.prod(extent[i + 1 :]) for i in range(len(extent))]


def _bounds(rows: torch.Tensor) -> tuple[list[int], list[int]]:
    lo, hi = torch.aminmax(rows, dim=0)
    both = torch.cat([lo, hi]).tolist()
    return both[: rows.shape[1]], both[rows.shape[1] :]


class _Hash:
    """Sorted int64 keys of coordinate rows (batch, x_1..x_D): binary-search lookups of rows."""

    def __init__(self, coords: torch.Tensor):
        self.lo, self.hi = (torch.tensor(b, device=coords.device) for b in _bounds(coords))
        self.mult = torch.tensor(_radix((self.hi - self.lo + 1).tolist()), device=coords.device)
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
    lo, hi = _bounds(cells)
    radix = _radix([h - low + 1 for low, h in zip(lo, hi)])
    base = sum(low * m for low, m in zip(lo, radix))
    keys, inverse = torch.unique((cells * torch.tensor(radix, device=cells.device)).sum(1) - base, return_inverse=True)
    # Every row sharing a key is the same row, so whichever one lands is right.
    return cells.new_empty(keys.shape[0], cells.shape[1]).index_put_((inverse,), cells), inverse


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
        self._counts: dict[Stride, torch.Tensor] = {}

    def coords(self, stride: Stride) -> torch.Tensor:
        return self._coords[stride]

    def batch_counts(self, stride: Stride) -> torch.Tensor:
        """Occupied cells per sample at ``stride``, (batch_size,)."""
        if stride not in self._counts:
            self._counts[stride] = torch.bincount(self._coords[stride][:, 0], minlength=self.batch_size)
        return self._counts[stride]

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
        """Each sample's rows as one pooling window (parent = batch index)."""
        key = ("global", stride)
        if key not in self._maps:
            batch = self._coords[stride][:, 0]
            slots = partial(_sample_slots, batch, self.batch_counts(stride))
            self._maps[key] = ParentMap(batch, self.batch_size, slots)
        return self._maps[key]

    def kernel_map(self, in_stride: Stride, out_stride: Stride, kernel_size: tuple[int, ...]) -> KernelMap:
        """The map (built once, then cached) of a kernel from ``in_stride`` to ``out_stride``.

        Output o reads input i through offset d when i = o + d * in_stride.
        """
        key = (in_stride, out_stride, kernel_size)
        if key not in self._maps:
            tiles = all(o == i * k and (k % 2 == 0 or k == 1) for i, o, k in zip(in_stride, out_stride, kernel_size))
            if tiles and (in_stride, out_stride) in self._parents:
                self._maps[key] = self._tiling(in_stride, out_stride, kernel_size)
            else:
                self._maps[key] = self._build(in_stride, out_stride, kernel_size)
        return self._maps[key]

    def _tiling(self, in_stride: Stride, out_stride: Stride, kernel_size: tuple[int, ...]) -> KernelMap:
        fine, parent = self._coords[in_stride], self._parents[(in_stride, out_stride)]
        cells = fine[:, 1:] if all(s == 1 for s in in_stride) else fine[:, 1:] // torch.tensor(in_stride, device=fine.device)
        return ParentMap(parent, self._coords[out_stride].shape[0], partial(_window_slots, cells, kernel_size))

    def _build(self, in_stride: Stride, out_stride: Stride, kernel_size: tuple[int, ...]) -> KernelMap:
        same = in_stride == out_stride
        fine, coarse = self._coords[in_stride], self._coords[out_stride]
        n_in, n_out, device = fine.shape[0], coarse.shape[0], fine.device
        if any(s > 1 for s in in_stride):  # work in units of input cells
            step = torch.tensor((1, *in_stride), device=device)
            fine = fine // step
            coarse = fine if same else coarse // step
        lo_c, hi_c = _bounds(fine)
        lo_q, hi_q = (lo_c, hi_c) if same else _bounds(coarse)
        # Per axis, keep the offsets that can reach an input from some output (on a flat grid,
        # only 0 along the flat axis); the region is a product of axes, so the kept set is too.
        axes = _axis_offsets(kernel_size)
        reach = [[d for d in r if lq + d <= hc and hq + d >= lc]
                 for r, lq, hq, lc, hc in zip(axes, lo_q[1:], hi_q[1:], lo_c[1:], hi_c[1:])]
        kept = list(itertools.product(*reach))
        index = _radix(list(kernel_size))
        keep = [sum((d - r.start) * m for d, r, m in zip(off, axes, index)) for off in kept]
        # Bounding box of the inputs and of every query (output + kept offset), batch axis first.
        lo = [min(lo_c[0], lo_q[0])] + [min(lc, lq + min(r, default=0)) for lc, lq, r in zip(lo_c[1:], lo_q[1:], reach)]
        hi = [max(hi_c[0], hi_q[0])] + [max(hc, hq + max(r, default=0)) for hc, hq, r in zip(hi_c[1:], hi_q[1:], reach)]
        extent = [h - low + 1 for low, h in zip(lo, hi)]
        if not kept:
            table = torch.full((n_out, 0), n_in, dtype=torch.long, device=device)
        elif math.prod(extent) <= max(DENSE_LOOKUP_CELLS, 32 * n_in):
            # Row of every cell of the bounding box (n_in where empty): a query is one gather.
            radix = _radix(extent)
            base = sum(low * m for low, m in zip(lo, radix))
            shift = [sum(d * m for d, m in zip(off, radix[1:])) - base for off in kept]
            mult_shift = torch.tensor(radix + shift, device=device)
            key = (fine * mult_shift[: len(radix)]).sum(1)
            volume = torch.full((math.prod(extent),), n_in, dtype=torch.long, device=device)
            volume[key - base] = torch.arange(n_in, device=device)
            query = key if same else (coarse * mult_shift[: len(radix)]).sum(1)
            table = volume[query[:, None] + mult_shift[len(radix) :]]
        else:
            batch_col = [(0, *off) for off in kept]
            found = _Hash(fine).lookup(coarse[None, :, :] + torch.tensor(batch_col, device=device)[:, None, :]).T
            table = torch.where(found >= 0, found, torch.full_like(found, n_in))
        # Offsets that reach the box but find no pair stay: their columns only read the zero row.
        mirrored = same and all(k % 2 for k in kernel_size) and keep == [math.prod(kernel_size) - 1 - k for k in reversed(keep)]
        return KernelMap(table, tuple(keep), n_in, n_out, mirrored=mirrored)


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
        manager = CoordinateManager(coords, spatial_shape, batch_size)
        from .ops import group_mean  # ops builds on this module

        return SparseTensor(group_mean(feats, ParentMap(inverse, coords.shape[0])), (1,) * len(spatial_shape), manager)
