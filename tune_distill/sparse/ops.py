"""Sparse operations: convolution, pooling over occupied cells, instance norm, global pooling.

Each op gathers rows through a kernel map's neighbour table (``KernelMap``) and does dense math
on them: one GEMM for a convolution over all its offsets, a max over the window for pooling.
Averages over groups (pooling windows that tile the grid, samples) are one segment sum. Backward
passes are the same kind of gather over the transposed table; there is no loop over offsets or
points. The ops are autograd functions whose backward is itself written in differentiable
PyTorch, so autograd gives first *and* second derivatives: gradient matching differentiates the
synthetic set's weight gradients with respect to its features, which needs double backward.

MinkowskiEngine's ops are custom autograd functions whose backward is not differentiable, so
under gradient matching its layers' weight gradients are constants with respect to the input.
``truncated=True`` reproduces exactly that: the op's backward runs without autograd. It is how the
paper's Minkowski network actually trained its synthetic set.

Kernels are laid out (K, C_in, C_out) with the K offsets in the C order of a dense ``conv3d``
weight's spatial axes, so ``weight[k] == dense.weight[:, :, kd, kh, kw].T``.
"""

from __future__ import annotations

from typing import Callable

import torch

from .tensor import KernelMap, ParentMap, SparseTensor


def _as_tuple(value: int | tuple[int, ...], d: int) -> tuple[int, ...]:
    return (value,) * d if isinstance(value, int) else tuple(value)


def _grad_mode(truncated: bool):
    """Inside a backward: let autograd record it (double backward) unless truncated."""
    return torch.set_grad_enabled(torch.is_grad_enabled() and not truncated)


def _padded(rows: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
    """``rows`` and one more row of ``fill``: what a table's "empty" index ``len(rows)`` reads."""
    return torch.cat([rows, rows.new_full((1, rows.shape[1]), fill)])


def _gather(rows: torch.Tensor, table: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
    """``rows[table]`` as (*table.shape, C), where the index ``len(rows)`` reads ``fill``."""
    return _padded(rows, fill).index_select(0, table.reshape(-1)).view(*table.shape, rows.shape[1])


class _Linear(torch.autograd.Function):
    """``fwd(x)`` for an op linear in x, with ``adjoint`` (its transpose) as the backward."""

    @staticmethod
    def forward(ctx, x, fwd: Callable, adjoint: Callable, truncated: bool):
        ctx.adjoint, ctx.truncated = adjoint, truncated
        return fwd(x)

    @staticmethod
    def backward(ctx, grad):
        with _grad_mode(ctx.truncated):
            return ctx.adjoint(grad), None, None, None


CHUNK_BYTES = 8 << 20  # gathered rows per GEMM: cache-sized, and far below glibc's 32 MB mmap limit


def _row_chunks(n_rows: int, row_bytes: int) -> list[slice]:
    """Split rows so that each chunk's gathered block stays small. A fresh block above 32 MB is
    mmapped, and page-faulting it in costs as much as the GEMM itself on this kind of machine."""
    step = max(1, CHUNK_BYTES // max(row_bytes, 1))
    return [slice(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]


def _conv_forward(feats: torch.Tensor, weight: torch.Tensor, table: torch.Tensor, keep: list | None = None):
    """``out[o] = sum_j feats[table[o, j]] @ weight[j]`` as gather + GEMM, chunked over outputs.

    With ``keep`` (a list), a single chunk's gathered rows are appended to it for reuse.
    """
    padded, w = _padded(feats), weight.reshape(-1, weight.shape[2])
    chunks = _row_chunks(table.shape[0], table.shape[1] * feats.shape[1] * feats.element_size())
    if len(chunks) == 1:
        cols = padded.index_select(0, table.reshape(-1)).view(table.shape[0], -1)
        if keep is not None:
            keep.append(cols)
        return cols @ w
    out = feats.new_empty(table.shape[0], weight.shape[2])
    for rows in chunks:
        cols = padded.index_select(0, table[rows].reshape(-1)).view(rows.stop - rows.start, -1)
        torch.mm(cols, w, out=out[rows])
    return out


def _conv_weight_grad(feats: torch.Tensor, grad: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``sum_o feats[table[o, j]]^T grad[o]`` for every j, as (K', C_in, C_out); differentiable."""
    padded, total = _padded(feats), None
    for rows in _row_chunks(table.shape[0], table.shape[1] * feats.shape[1] * feats.element_size()):
        cols = padded.index_select(0, table[rows].reshape(-1)).view(rows.stop - rows.start, -1)
        part = cols.T @ grad[rows]
        total = part if total is None else total + part
    if total is None:  # no output rows
        total = grad.new_zeros(table.shape[1] * feats.shape[1], grad.shape[1])
    return total.view(table.shape[1], feats.shape[1], grad.shape[1])


class _Conv(torch.autograd.Function):
    """Sparse convolution over a kernel map: gather + GEMM.

    The input gradient is the same op on the transposed table with each weight transposed; the
    weight gradient one GEMM of the gathered rows with the output gradient. Truncated, the
    backward is plain tensor code (no graph), reusing the forward's gathered rows when small.
    """

    @staticmethod
    def forward(ctx, feats, weight, kmap: KernelMap, truncated: bool):
        ctx.kmap, ctx.truncated, ctx.cols = kmap, truncated, []
        ctx.save_for_backward(feats, weight)
        return _conv_forward(feats, weight, kmap.table, ctx.cols if truncated else None)

    @staticmethod
    def backward(ctx, grad):
        feats, weight = ctx.saved_tensors
        kmap, grad_feats, grad_weight = ctx.kmap, None, None
        if ctx.truncated:
            with torch.no_grad():
                if ctx.needs_input_grad[0]:
                    grad_feats = _conv_forward(grad, weight.transpose(1, 2), kmap.transposed.table)
                if ctx.needs_input_grad[1]:
                    grad_weight = ((ctx.cols[0].T @ grad).view(weight.shape) if ctx.cols
                                   else _conv_weight_grad(feats, grad, kmap.table))
            return grad_feats, grad_weight, None, None
        if ctx.needs_input_grad[0]:
            grad_feats = _Conv.apply(grad, weight.transpose(1, 2), kmap.transposed, False)
        if ctx.needs_input_grad[1]:
            grad_weight = _conv_weight_grad(feats, grad, kmap.table)
        return grad_feats, grad_weight, None, None


def _active_rows(weight: torch.Tensor, active: tuple[int, ...]) -> torch.Tensor:
    """The kernel's rows for the offsets a map uses (a slice when they are contiguous)."""
    if len(active) == weight.shape[0]:
        return weight
    if active and active == tuple(range(active[0], active[-1] + 1)):
        return weight[active[0] : active[-1] + 1]
    return weight[list(active)]


def conv(x: SparseTensor, weight: torch.Tensor, kernel_size: int | tuple[int, ...] = 3,
         stride: int | tuple[int, ...] = 1, bias: torch.Tensor | None = None, truncated: bool = False) -> SparseTensor:
    """Sparse convolution. Stride 1 keeps the input cells; stride s > 1 outputs the coarse cells.

    Output cell o sums ``feats[i] @ weight[k]`` over every occupied input i = o + offset_k * stride_in
    (MinkowskiEngine's generalised convolution; empty neighbours contribute nothing).
    """
    d = len(x.stride)
    ks, st = _as_tuple(kernel_size, d), _as_tuple(stride, d)
    out_stride = x.manager.downsample(x.stride, st) if any(s > 1 for s in st) else x.stride
    kmap = x.manager.kernel_map(x.stride, out_stride, ks)
    out = _Conv.apply(x.feats, _active_rows(weight, kmap.active), kmap, truncated)
    if bias is not None:
        out = out + bias
    return SparseTensor(out, out_stride, x.manager)


def _pool_map(x: SparseTensor, kernel_size, stride) -> tuple[tuple[int, ...], KernelMap]:
    d = len(x.stride)
    out_stride = x.manager.downsample(x.stride, _as_tuple(stride, d))
    return out_stride, x.manager.kernel_map(x.stride, out_stride, _as_tuple(kernel_size, d))


def _window_max(feats: torch.Tensor, kmap: KernelMap) -> tuple[torch.Tensor, torch.Tensor]:
    """Each output's max over its window and the winning column (the first, on ties): (n_out, C) each."""
    if kmap.table.shape[1] > 8:  # wide windows (a sample's global pool): one gather, one reduction
        return _gather(feats, kmap.table, float("-inf")).max(1)
    # Narrow windows: a running max over the columns, one (n_out, C) slab at a time.
    padded, columns = _padded(feats, float("-inf")), kmap.columns
    best = padded.index_select(0, columns[0])
    arg = torch.zeros(best.shape, dtype=torch.uint8, device=feats.device)
    for j in range(1, columns.shape[0]):
        value = padded.index_select(0, columns[j])
        # Arithmetic rather than where/masked_fill, which are several times slower on CPU.
        arg = torch.maximum(arg, (value > best).to(torch.uint8).mul_(j))
        best = torch.maximum(best, value)
    return best, arg


def _max_over(feats: torch.Tensor, kmap: KernelMap, truncated: bool) -> torch.Tensor:
    """Max over each output's window; the gradient goes to the (first) winner only."""
    with torch.no_grad():
        values, arg = _window_max(feats, kmap)

    def adjoint(grad: torch.Tensor) -> torch.Tensor:
        if kmap.parent is not None:  # each input has one output: did it win there?
            won = arg.index_select(0, kmap.parent) == kmap.slot[:, None]
            return grad.index_select(0, kmap.parent) * won
        winner = kmap.table.gather(1, arg.long())  # input row per (output, channel)
        rows = torch.arange(kmap.n_in, device=grad.device)
        won = _gather(winner, kmap.table_t, -1) == rows[:, None, None]
        return (_gather(grad, kmap.table_t) * won).sum(1)

    return _Linear.apply(feats, lambda f: values, adjoint, truncated)


def group_mean(rows: torch.Tensor, groups: ParentMap, truncated: bool = False) -> torch.Tensor:
    """Mean of each group's rows, (n_out, C); its backward is a gather, differentiable twice."""
    inv_count = groups.inv_counts(rows.dtype)
    if not (rows.requires_grad and torch.is_grad_enabled()):  # e.g. inside another op's forward
        return groups.sum_rows(rows) * inv_count
    return _Linear.apply(rows, lambda f: groups.sum_rows(f) * inv_count,
                         lambda grad: (grad * inv_count).index_select(0, groups.parent), truncated)


def _mean_over(feats: torch.Tensor, kmap: KernelMap, truncated: bool) -> torch.Tensor:
    """Mean over each output's occupied inputs."""
    if isinstance(kmap, ParentMap):  # every input in exactly one window
        return group_mean(feats, kmap, truncated)
    inv_count = kmap.inv_counts(feats.dtype)

    def window_sum(f: torch.Tensor) -> torch.Tensor:
        padded, columns = _padded(f), kmap.columns
        total = padded.index_select(0, columns[0])
        for j in range(1, columns.shape[0]):
            total = total + padded.index_select(0, columns[j])
        return total * inv_count

    return _Linear.apply(feats, window_sum, lambda grad: _gather(grad * inv_count, kmap.table_t).sum(1), truncated)


def max_pool(x: SparseTensor, kernel_size: int | tuple[int, ...] = 2, stride: int | tuple[int, ...] = 2,
             truncated: bool = False) -> SparseTensor:
    """Max over the *occupied* cells of each window (empty cells are not zeros)."""
    out_stride, kmap = _pool_map(x, kernel_size, stride)
    return SparseTensor(_max_over(x.feats, kmap, truncated), out_stride, x.manager)


def avg_pool(x: SparseTensor, kernel_size: int | tuple[int, ...] = 2, stride: int | tuple[int, ...] = 2,
             truncated: bool = False) -> SparseTensor:
    """Mean over the *occupied* cells of each window (MinkowskiEngine's average pooling)."""
    out_stride, kmap = _pool_map(x, kernel_size, stride)
    return SparseTensor(_mean_over(x.feats, kmap, truncated), out_stride, x.manager)


def global_pool(x: SparseTensor, mode: str = "avg", truncated: bool = False) -> torch.Tensor:
    """Pool every sample's occupied cells to one vector: (batch_size, C). Mode avg|sum|max."""
    kmap = x.manager.global_map(x.stride)
    if mode == "max":
        return _max_over(x.feats, kmap, truncated)
    out = _mean_over(x.feats, kmap, truncated)
    return out * kmap.counts.clamp(min=1).to(out.dtype)[:, None] if mode == "sum" else out


def _normalise(feats: torch.Tensor, samples: ParentMap, eps: float):
    """(x - mean) / sqrt(var + eps) per sample (biased variance); also returns 1 / std."""
    batch = samples.parent
    centred = feats - group_mean(feats, samples).index_select(0, batch)
    inv_std = torch.rsqrt(group_mean(centred * centred, samples) + eps)
    return centred * inv_std.index_select(0, batch), inv_std


class _InstanceNorm(torch.autograd.Function):
    """MinkowskiEngine's instance norm function: one op, analytic backward, no double backward."""

    @staticmethod
    def forward(ctx, feats, samples: ParentMap, eps: float):
        out, inv_std = _normalise(feats, samples, eps)
        ctx.samples = samples
        ctx.save_for_backward(out, inv_std)
        return out

    @staticmethod
    def backward(ctx, grad):
        out, inv_std = ctx.saved_tensors
        samples = ctx.samples
        batch, inv_count = samples.parent, samples.inv_counts(grad.dtype)
        with torch.no_grad():
            mean_grad = (samples.sum_rows(grad) * inv_count).index_select(0, batch)
            mean_grad_out = (samples.sum_rows(grad * out) * inv_count).index_select(0, batch)
            grad_in = (grad - mean_grad - out * mean_grad_out) * inv_std.index_select(0, batch)
        return grad_in, None, None


def instance_norm(x: SparseTensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                  eps: float = 1e-8, truncated: bool = False) -> SparseTensor:
    """Normalise each sample's features over its occupied cells (biased variance), then affine.

    ``eps`` defaults to MinkowskiEngine's (1e-8, not torch's 1e-5), so both engines agree.
    Truncated, the normalisation is one function without double backward, as MinkowskiEngine's
    ``MinkowskiInstanceNorm``; the affine is plain PyTorch in both engines.
    """
    samples = x.manager.global_map(x.stride)
    if truncated:
        out = _InstanceNorm.apply(x.feats, samples, eps)
    else:
        out, _ = _normalise(x.feats, samples, eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return x.replace(out)


def dense_shape(x: SparseTensor) -> tuple[int, ...]:
    """Spatial shape of ``to_dense``'s output: the grid divided by the stride, rounded up."""
    return tuple(-(-g // s) for g, s in zip(x.manager.spatial_shape, x.stride))


def to_dense(x: SparseTensor) -> torch.Tensor:
    """Scatter features into a zero grid (batch_size, C, *dense_shape(x)); empty cells are 0."""
    shape = dense_shape(x)
    cells = torch.div(x.coords[:, 1:], torch.tensor(x.stride, device=x.coords.device), rounding_mode="floor")
    grid = x.feats.new_zeros((x.batch_size, *shape, x.feats.shape[1]))
    grid = grid.index_put((x.coords[:, 0], *cells.unbind(1)), x.feats)
    return grid.movedim(-1, 1)
