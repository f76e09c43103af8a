"""The pure-PyTorch sparse engine against dense references.

Every op is compared with its dense PyTorch counterpart on the voxel grid (empty cells excluded
where MinkowskiEngine's semantics say so), checked with gradcheck/gradgradcheck in float64, and
checked for the engine's own promises: clouds in one batch never mix, kernel maps are built
once, and ``truncated`` removes exactly the second-order path. Runs on CUDA too when present.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from tune_distill.sparse import SparseTensor, ops
from tune_distill.sparse.backend import SparseBackend

GRID = (5, 7, 6)  # odd extents: strided grids round up


def cloud(n: int, batch_size: int, channels: int, grid=GRID, seed: int = 0, dtype=torch.float32, device="cpu"):
    """Random points quantised to cells, random features: a SparseTensor at stride 1."""
    gen = torch.Generator().manual_seed(seed)
    pts = torch.rand(n, len(grid), generator=gen) * torch.tensor(grid, dtype=torch.float32)
    batch = torch.randint(0, batch_size, (n,), generator=gen)
    feats = torch.randn(n, channels, generator=gen, dtype=dtype)
    return SparseTensor.from_points(pts.to(device), batch.to(device), feats.to(device), batch_size, grid)


def dense_weight(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """Our (K, C_in, C_out) kernel as a conv3d weight (C_out, C_in, k, k, k)."""
    return kernel.reshape(k, k, k, *kernel.shape[1:]).permute(4, 3, 0, 1, 2)


def occupancy(x: SparseTensor) -> torch.Tensor:
    """(B, *dense_shape) boolean grid of x's cells."""
    return ops.to_dense(x.replace(torch.ones_like(x.feats[:, :1]))).squeeze(1) > 0


def at_cells(dense: torch.Tensor, x: SparseTensor) -> torch.Tensor:
    """Rows of a dense (B, C, *grid) tensor at x's cells: (N, C), in x's row order."""
    cells = torch.div(x.coords[:, 1:], torch.tensor(x.stride, device=dense.device), rounding_mode="floor")
    return dense.movedim(1, -1)[(x.coords[:, 0], *cells.unbind(1))]


def padded_even(dense: torch.Tensor, fill: float) -> torch.Tensor:
    """Pad the spatial axes up to even extents with ``fill`` (empty cells)."""
    pads = []
    for size in reversed(dense.shape[2:]):
        pads += [0, size % 2]
    return F.pad(dense, pads, value=fill)


@pytest.mark.parametrize("k,stride", [(3, 1), (3, 2), (2, 2), (1, 1)])
def test_conv_equals_dense_conv3d_at_occupied_cells(device, k, stride):
    x = cloud(120, 3, 4, device=device)
    kernel = torch.randn(k**3, 4, 5, device=device)
    y = ops.conv(x, kernel, k, stride)
    # Odd kernels are centred; even ones start at the output cell and may reach past the grid's end.
    dense = ops.to_dense(x) if k % 2 else padded_even(ops.to_dense(x), 0.0)
    # The reference in float64: on CUDA, cuDNN's conv3d runs float32 in TF32 (errors ~5e-3 here).
    ref = F.conv3d(dense.double(), dense_weight(kernel, k).double(), stride=stride,
                   padding=k // 2 if k % 2 else 0).float()
    assert y.stride == (stride,) * 3
    # Stride > 1 outputs exactly the coarse cells that hold an input cell.
    if stride > 1:
        assert torch.equal(occupancy(y), F.max_pool3d(occupancy(x)[:, None].float(), 2, 2, ceil_mode=True)[:, 0] > 0)
    torch.testing.assert_close(y.feats, at_cells(ref, y), rtol=1e-4, atol=1e-4)


def test_group_sums_agree_for_one_and_two_threads():
    """Per-group sums scatter-add with one thread and sum sorted segments with more."""
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        x, feats = f64_cloud(channels=3, n=60)
        w, b = f64(3), f64(3)
        y = ops.avg_pool(ops.instance_norm(x.replace(feats), w, b), 2, 2).feats
        pooled = ops.global_pool(x.replace(feats), "avg")
        results.append((y, pooled, *torch.autograd.grad((y.square().sum() + pooled.sum()), (feats, w, b))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_chunked_conv_matches_one_block(monkeypatch):
    """Large convolutions gather and multiply in row chunks; the result must not depend on it."""
    x, feats = f64_cloud(channels=3, n=60)
    kernel = f64(27, 3, 4)
    outs = []
    for chunk in (ops.CHUNK_BYTES, 64):  # 64 bytes: a chunk per output row
        monkeypatch.setattr(ops, "CHUNK_BYTES", chunk)
        for truncated in (False, True):
            y = ops.conv(x.replace(feats), kernel, 3, 2, truncated=truncated).feats
            outs.append((y, *torch.autograd.grad(y.square().sum(), (feats, kernel))))
    for other in outs[1:]:
        for a, b in zip(other, outs[0]):
            torch.testing.assert_close(a, b)


def test_pooling_equals_dense_pooling_over_occupied_cells(device):
    x = cloud(150, 2, 3, device=device)
    occ = occupancy(x)[:, None].expand(-1, 3, -1, -1, -1)
    dense = ops.to_dense(x)
    # Max: empty cells are -inf, never zeros.
    y = ops.max_pool(x, 2, 2)
    ref = F.max_pool3d(padded_even(dense.masked_fill(~occ, float("-inf")), float("-inf")), 2, 2)
    torch.testing.assert_close(y.feats, at_cells(ref, y))
    # Average: sum over the window's occupied cells divided by their number.
    y = ops.avg_pool(x, 2, 2)
    total = F.avg_pool3d(padded_even(dense, 0.0), 2, 2, divisor_override=1)
    count = F.avg_pool3d(padded_even(occ.float(), 0.0), 2, 2, divisor_override=1)
    torch.testing.assert_close(y.feats, at_cells(total / count.clamp(min=1), y))


def test_instance_norm_and_global_pool_per_cloud(device):
    x = cloud(200, 3, 4, device=device)
    w, b = torch.randn(4, device=device), torch.randn(4, device=device)
    y = ops.instance_norm(x, w, b)
    for i in range(3):
        rows = x.coords[:, 0] == i
        f = x.feats[rows]
        ref = F.instance_norm(f.T[None], weight=w, bias=b, eps=1e-8)[0].T
        torch.testing.assert_close(y.feats[rows], ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ops.global_pool(x, "avg")[i], f.mean(0))
        torch.testing.assert_close(ops.global_pool(x, "sum")[i], f.sum(0))
        torch.testing.assert_close(ops.global_pool(x, "max")[i], f.max(0).values)


def test_to_dense_places_every_row_at_its_cell(device):
    x = cloud(80, 2, 3, device=device)
    grid = ops.to_dense(x)
    assert grid.shape == (2, 3, *GRID)
    assert int(occupancy(x).sum()) == x.feats.shape[0]
    torch.testing.assert_close(at_cells(grid, x), x.feats)
    y = ops.max_pool(x, 2, 2)
    assert ops.to_dense(y).shape == (2, 3, 3, 4, 3) == (2, 3, *ops.dense_shape(y))


def test_from_points_averages_points_sharing_a_cell():
    pts = torch.tensor([[0.2, 1.0, 1.1], [0.0, 0.9, 1.4], [2.0, 2.0, 2.0]])
    feats = torch.tensor([[1.0], [3.0], [5.0]])
    x = SparseTensor.from_points(pts, torch.zeros(3, dtype=torch.long), feats, 1, (3, 3, 3))
    assert x.coords.tolist() == [[0, 0, 1, 1], [0, 2, 2, 2]]
    assert x.feats.flatten().tolist() == [2.0, 5.0]


def f64_cloud(channels: int = 2, n: int = 14):
    x = cloud(n, 2, channels, grid=(2, 3, 3), seed=1, dtype=torch.float64)
    return x, x.feats.detach().clone().requires_grad_(True)


def f64(*shape) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).requires_grad_(True)


@pytest.mark.parametrize(
    "name,op,params",
    [
        ("conv s1", lambda x, w: ops.conv(x, w, 3, 1).feats, [(27, 2, 1)]),
        ("conv s2", lambda x, w: ops.conv(x, w, 3, 2).feats, [(27, 2, 1)]),
        ("conv k2 s2", lambda x, w: ops.conv(x, w, 2, 2).feats, [(8, 2, 1)]),
        ("max pool", lambda x: ops.max_pool(x, 2, 2).feats, []),
        ("max pool k3", lambda x: ops.max_pool(x, 3, 2).feats, []),
        ("avg pool", lambda x: ops.avg_pool(x, 2, 2).feats, []),
        ("avg pool k3", lambda x: ops.avg_pool(x, 3, 2).feats, []),
        ("instance norm", lambda x, w, b: ops.instance_norm(x, w, b).feats, [(2,), (2,)]),
        ("global avg", lambda x: ops.global_pool(x, "avg"), []),
        ("global max", lambda x: ops.global_pool(x, "max"), []),
        ("to dense", lambda x: ops.to_dense(x), []),
    ],
)
def test_gradcheck_and_gradgradcheck_float64(name, op, params):
    x, feats = f64_cloud()
    inputs = (feats, *(f64(*shape) for shape in params))

    def fn(f, *p):
        return op(x.replace(f), *p)

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_clouds_in_one_batch_never_mix():
    a = cloud(60, 1, 3, seed=2)
    b = cloud(60, 1, 3, seed=3)  # overlapping cells, different cloud
    both = SparseTensor.from_points(
        torch.cat([a.coords[:, 1:], b.coords[:, 1:]]).float(),
        torch.cat([torch.zeros(len(a.coords)), torch.ones(len(b.coords))]).long(),
        torch.cat([a.feats, b.feats]), 2, GRID,
    )
    kernel, w, bias = torch.randn(27, 3, 4), torch.randn(4), torch.randn(4)

    def net(x):
        h = ops.instance_norm(ops.conv(x, kernel, 3), w, bias)
        return ops.to_dense(ops.max_pool(ops.conv(h, torch.randn(27, 4, 2, generator=torch.Generator().manual_seed(0)), 3, 2), 2, 2))

    out = net(both)
    torch.testing.assert_close(out[:1], net(a), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1:], net(b), rtol=1e-5, atol=1e-5)


def brute_force_pairs(x: SparseTensor, out_stride, k: int) -> set:
    """(offset, input row, output row) for every occupied input = output + offset * stride."""
    rows_in = {tuple(c): i for i, c in enumerate(x.coords.tolist())}
    first = -(k // 2) if k % 2 else 0
    pairs = set()
    for o, c in enumerate(x.manager.coords(out_stride).tolist()):
        for j, off in enumerate(itertools.product(range(first, first + k), repeat=3)):
            q = (c[0], *(ci + d * s for ci, d, s in zip(c[1:], off, x.stride)))
            if q in rows_in:
                pairs.add((j, rows_in[q], o))
    return pairs


@pytest.mark.parametrize("k,stride", [(3, 1), (2, 1), (3, 2), (2, 2)])
def test_kernel_map_matches_brute_force(k, stride):
    x = cloud(90, 2, 1)
    out_stride = x.manager.downsample(x.stride, (stride,) * 3) if stride > 1 else x.stride
    kmap = x.manager.kernel_map(x.stride, out_stride, (k,) * 3)
    found = {(j, int(i), int(o)) for j, i_idx, o_idx in kmap.segments() for i, o in zip(i_idx, o_idx)}
    assert found == brute_force_pairs(x, out_stride, k)


@pytest.mark.parametrize("stride", [1, 2])
def test_binary_search_lookup_gives_the_same_map(monkeypatch, stride):
    """Sparse clouds in a large box are looked up by binary search instead of a dense volume."""
    from tune_distill.sparse import tensor

    x = cloud(40, 2, 1, grid=(40, 40, 40), seed=4)
    out = x.manager.downsample(x.stride, (stride,) * 3) if stride > 1 else x.stride
    dense = x.manager.kernel_map(x.stride, out, (3, 3, 3))
    monkeypatch.setattr(tensor, "DENSE_LOOKUP_CELLS", 0)
    fresh = tensor.CoordinateManager(x.coords, (40, 40, 40), 2)
    fresh.downsample(x.stride, (stride,) * 3)
    searched = fresh.kernel_map(x.stride, out, (3, 3, 3))
    assert searched.active == dense.active and torch.equal(searched.table, dense.table)


def test_kernel_maps_are_built_once_and_reused():
    x = cloud(100, 2, 3)
    m = x.manager
    first = m.kernel_map((1, 1, 1), (1, 1, 1), (3, 3, 3))
    ops.conv(x, torch.randn(27, 3, 3), 3)
    ops.conv(x, torch.randn(27, 3, 3), 3)
    assert m.kernel_map((1, 1, 1), (1, 1, 1), (3, 3, 3)) is first
    m.downsample((1, 1, 1), (2, 2, 2))
    pool = m.kernel_map((1, 1, 1), (2, 2, 2), (2, 2, 2))
    ops.max_pool(x, 2, 2)
    ops.avg_pool(x, 2, 2)
    assert m.kernel_map((1, 1, 1), (2, 2, 2), (2, 2, 2)) is pool


@pytest.mark.parametrize("truncated", [False, True])
def test_truncated_mode_has_no_second_order_path(truncated):
    x, feats = f64_cloud()
    kernel = torch.randn(27, 2, 3, dtype=torch.float64, requires_grad=True)
    backend = SparseBackend(truncated=truncated)
    h = backend.max_pool(backend.relu(backend.conv(x.replace(feats), kernel, 3)), 2, 2)
    (g_kernel,) = torch.autograd.grad(h.feats.square().sum(), kernel, create_graph=True)
    # Same first-order values either way...
    x2, f2 = f64_cloud()
    plain = SparseBackend().max_pool(SparseBackend().relu(SparseBackend().conv(x2.replace(f2), kernel, 3)), 2, 2)
    torch.testing.assert_close(g_kernel, torch.autograd.grad(plain.feats.square().sum(), kernel)[0])
    # ...but only full mode lets the weight gradient be differentiated w.r.t. the input.
    assert g_kernel.requires_grad is not truncated
    if not truncated:
        (gg,) = torch.autograd.grad(g_kernel.square().sum(), feats)
        assert gg.abs().sum() > 0


def test_backend_runs_a_network_end_to_end():
    from tune_distill.nets import SparseNet

    x = cloud(200, 4, 3, grid=(1, 12, 12))
    for norm, pooling in [("instance", "max"), ("none", "avg")]:
        net = SparseNet(3, 10, (1, 12, 12), depth=2, width=8, pooling=pooling, norm=norm)
        logits = net(x)
        assert logits.shape == (4, 10) and torch.isfinite(logits).all()
