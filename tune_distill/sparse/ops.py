"""Sparse operations: convolution, pooling over occupied cells, instance norm, global pooling.

Every op is built from differentiable PyTorch primitives (gather, matmul, index_add), so
autograd gives first *and* second derivatives: gradient matching differentiates the synthetic
set's weight gradients with respect to its features, which needs double backward.

MinkowskiEngine's ops are custom autograd functions whose backward is not itself
differentiable, so under gradient matching its layers' weight gradients are constants with
respect to the input. ``truncated=True`` reproduces exactly that: the op's backward runs outside
autograd. It is how the paper's Minkowski network actually trained its synthetic set.

Kernels are laid out (K, C_in, C_out) with the K offsets in the C order of a dense ``conv3d``
weight's spatial axes, so ``weight[k] == dense.weight[:, :, kd, kh, kw].T``.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch

from .tensor import KernelMap, SparseTensor


class _Truncated(torch.autograd.Function):
    """Runs ``fn`` on tensors; its backward returns gradients that carry no graph."""

    @staticmethod
    def forward(ctx, fn, *tensors):
        ctx.fn = fn
        ctx.save_for_backward(*tensors)
        return fn(*tensors)

    @staticmethod
    def backward(ctx, grad):
        tensors = ctx.saved_tensors
        wanted = ctx.needs_input_grad[1:]
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(w) for t, w in zip(tensors, wanted)]
            out = ctx.fn(*inputs)
            needed = [i for i, w in zip(inputs, wanted) if w]
            grads = iter(torch.autograd.grad(out, needed, grad, allow_unused=True))
        return (None, *(next(grads) if w else None for w in wanted))


def _apply(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor, truncated: bool) -> torch.Tensor:
    return _Truncated.apply(fn, *tensors) if truncated else fn(*tensors)


def _as_tuple(value: int | tuple[int, ...], d: int) -> tuple[int, ...]:
    return (value,) * d if isinstance(value, int) else tuple(value)


def _conv_feats(feats: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, n_out: int) -> torch.Tensor:
    out = feats.new_zeros(n_out, weight.shape[2])
    for k, i, o in kmap.segments():
        out = out.index_add(0, o, feats[i] @ weight[k])
    return out


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
    n_out = x.manager.coords(out_stride).shape[0]
    out = _apply(partial(_conv_feats, kmap=kmap, n_out=n_out), x.feats, weight, truncated=truncated)
    if bias is not None:
        out = out + bias
    return SparseTensor(out, out_stride, x.manager)


def _winners(vals: torch.Tensor, rows: torch.Tensor, groups: torch.Tensor, n_groups: int, n_rows: int) -> torch.Tensor:
    """For each (group, channel), the lowest row holding the group's max: (n_groups, C).

    Groups with no member get ``n_rows`` (one past the last row).
    """
    c = vals.shape[1]
    index = groups[:, None].expand(-1, c)
    best = vals.new_full((n_groups, c), float("-inf")).scatter_reduce(0, index, vals, "amax")
    cand = torch.where(vals == best[groups], rows[:, None].expand(-1, c), torch.full_like(index, n_rows))
    return cand.new_full((n_groups, c), n_rows).scatter_reduce(0, index, cand, "amin")


def _gather_rows(feats: torch.Tensor, winner: torch.Tensor) -> torch.Tensor:
    padded = torch.cat([feats, feats.new_zeros(1, feats.shape[1])])  # row n: empty group -> 0
    return padded.gather(0, winner)


def _pool_map(x: SparseTensor, kernel_size, stride):
    d = len(x.stride)
    ks, st = _as_tuple(kernel_size, d), _as_tuple(stride, d)
    out_stride = x.manager.downsample(x.stride, st)
    kmap = x.manager.kernel_map(x.stride, out_stride, ks, per_offset=False)
    return out_stride, kmap, x.manager.coords(out_stride).shape[0]


def max_pool(x: SparseTensor, kernel_size: int | tuple[int, ...] = 2, stride: int | tuple[int, ...] = 2,
             truncated: bool = False) -> SparseTensor:
    """Max over the *occupied* cells of each window (empty cells are not zeros).

    The winner of each (cell, channel) is found without autograd and its value gathered, so the
    op is differentiable twice, like a dense max pool (the gradient goes to the winner only).
    """
    out_stride, kmap, n_out = _pool_map(x, kernel_size, stride)
    with torch.no_grad():
        winner = _winners(x.feats[kmap.in_idx], kmap.in_idx, kmap.out_idx, n_out, x.feats.shape[0])
    return SparseTensor(_apply(partial(_gather_rows, winner=winner), x.feats, truncated=truncated), out_stride, x.manager)


def _mean_feats(feats: torch.Tensor, rows: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    summed = feats.new_zeros(n_groups, feats.shape[1]).index_add(0, groups, feats[rows])
    count = torch.bincount(groups, minlength=n_groups).clamp(min=1).to(feats.dtype)
    return summed / count[:, None]


def avg_pool(x: SparseTensor, kernel_size: int | tuple[int, ...] = 2, stride: int | tuple[int, ...] = 2,
             truncated: bool = False) -> SparseTensor:
    """Mean over the *occupied* cells of each window (MinkowskiEngine's average pooling)."""
    out_stride, kmap, n_out = _pool_map(x, kernel_size, stride)
    fn = partial(_mean_feats, rows=kmap.in_idx, groups=kmap.out_idx, n_groups=n_out)
    return SparseTensor(_apply(fn, x.feats, truncated=truncated), out_stride, x.manager)


def global_pool(x: SparseTensor, mode: str = "avg", truncated: bool = False) -> torch.Tensor:
    """Pool every sample's occupied cells to one vector: (batch_size, C). Mode avg|sum|max."""
    b = x.coords[:, 0]
    n, rows = x.batch_size, torch.arange(x.feats.shape[0], device=b.device)
    if mode == "max":
        with torch.no_grad():
            winner = _winners(x.feats, rows, b, n, x.feats.shape[0])
        return _apply(partial(_gather_rows, winner=winner), x.feats, truncated=truncated)
    if mode == "sum":
        return _apply(lambda f: f.new_zeros(n, f.shape[1]).index_add(0, b, f), x.feats, truncated=truncated)
    return _apply(partial(_mean_feats, rows=rows, groups=b, n_groups=n), x.feats, truncated=truncated)


def _broadcast(feats: torch.Tensor, per_sample: torch.Tensor, batch: torch.Tensor, op: str) -> torch.Tensor:
    return feats + per_sample[batch] if op == "add" else feats * per_sample[batch]


def instance_norm(x: SparseTensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                  eps: float = 1e-5, truncated: bool = False) -> SparseTensor:
    """Normalise each sample's features over its occupied cells (biased variance), then affine.

    Composed like MinkowskiEngine's instance norm (global means and broadcasts), so that with
    ``truncated`` the same pieces lose their double backward as they do there.
    """
    b = x.coords[:, 0]
    add = partial(_broadcast, batch=b, op="add")
    neg_mean = -global_pool(x, "avg", truncated=truncated)
    centred = _apply(add, x.feats, neg_mean, truncated=truncated)
    var = global_pool(x.replace(centred * centred), "avg", truncated=truncated)
    inv_std = 1 / torch.sqrt(var + eps)
    out = _apply(partial(_broadcast, batch=b, op="mul"), centred, inv_std, truncated=truncated)
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
