"""Parity of the MinkowskiEngine backend with our engine: same outputs, same gradients.

Layer by layer and for whole ``paper-sparse`` networks on real MNIST, both backends see the same
quantised cells and the same weights (ours converted to MinkowskiEngine's kernel layout). Rows
are matched by coordinates, because MinkowskiEngine orders strided outputs its own way. Since
MinkowskiEngine has no double backward, distillation is compared with our ``truncated`` mode.

Tolerance: every output and gradient agrees to ``REL`` (1e-5) relative to its largest entry --
float32 rounding; measured up to 1.4e-6 -- and a short distillation gives the same synthetic
points to ``SYN_ATOL`` (1e-5) grid cells, a few float32 ulps of coordinates up to 27.

Skipped (with the import error as the reason) only where MinkowskiEngine cannot be imported;
``python scripts/install_minkowski.py`` builds it.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from tune_distill.recipe.config import make_config
from tune_distill.data import PointBatch
from tune_distill.methods.loop import distill
from tune_distill.nets import NetSettings
from tune_distill.recipe.run import distill_settings, encoding_of, settings
from tune_distill.core.errors import UserError
from tune_distill.methods.matching import gradient_match
from tune_distill.nets import SparseNet, build_distill_net
from tune_distill.sparse import SparseTensor, ops
from tune_distill.sparse import minkowski as mk
from tune_distill.sparse.backend import SparseBackend, get_backend
from tune_distill.methods.synthetic import init_synthetic

REL = 1e-5
SYN_ATOL = 1e-5
ERROR = mk.import_error()
needs_me = pytest.mark.skipif(ERROR is not None, reason=f"MinkowskiEngine does not import ({ERROR}); "
                              "build it with: python scripts/install_minkowski.py")
GRID = (4, 9, 9)


def close(a: torch.Tensor, b: torch.Tensor, rel: float = REL) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a - b).abs().max().item()
    assert err <= rel * max(b.abs().max().item(), 1e-6), f"max abs diff {err:.3g} vs scale {b.abs().max().item():.3g}"


def in_our_order(m: "mk.MinkowskiTensor", ours: SparseTensor) -> torch.Tensor:
    """MinkowskiEngine's feature rows reordered to our rows (same cell set asserted)."""
    mc, oc = m.st.C.long(), ours.coords
    span = int(max(mc.max(), oc.max())) + 1
    key = lambda c: ((c[:, 0] * span + c[:, 1]) * span + c[:, 2]) * span + c[:, 3]  # noqa: E731
    km, ko = key(mc), key(oc)
    sorted_m, order = km.sort()
    assert torch.equal(sorted_m, ko.sort().values), "different cells"
    return m.st.F[order[torch.searchsorted(sorted_m, ko)]]


def random_input(seed: int = 0, n: int = 300, batch_size: int = 3):
    """Points with coordinates as features (requires grad), quantised by our encoder."""
    gen = torch.Generator().manual_seed(seed)
    pts = (torch.rand(n, 3, generator=gen) * torch.tensor(GRID, dtype=torch.float32)).requires_grad_(True)
    batch = torch.randint(0, batch_size, (n,), generator=gen)
    return pts, SparseTensor.from_points(pts, batch, pts, batch_size, GRID)


def test_asking_for_minkowski_without_it_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "MinkowskiEngine", None)  # what an absent package looks like
    assert not mk.available()
    with pytest.raises(UserError, match="python scripts/install_minkowski.py") as info:
        get_backend("minkowski", truncated=True)
    assert "\n" not in str(info.value)
    assert isinstance(get_backend("auto", truncated=True), SparseBackend)


def test_minkowski_needs_truncated_second_order():
    with pytest.raises(UserError, match="second_order=truncated"):
        get_backend("minkowski", truncated=False)


def test_kernel_layout_converters_invert_each_other():
    k = torch.randn(2 * 3 * 4, 5, 6)
    assert torch.equal(mk.from_minkowski_kernel(mk.to_minkowski_kernel(k, (2, 3, 4)), (2, 3, 4)), k)


@needs_me
def test_auto_picks_minkowski_only_for_truncated_configs():
    assert get_backend("auto", truncated=True).name == "minkowski"
    assert get_backend("auto", truncated=False).name == "torch"


@needs_me
def test_minkowski_offset_order_is_ours_with_axes_reversed():
    """One occupied centre and its 26 neighbours: output at o reads the kernel at offset c - o."""
    me = mk.MinkowskiBackend()
    pts = torch.cartesian_prod(*[torch.arange(3.0)] * 3)
    feats = (pts == 1).all(1, keepdim=True).float()  # 1 at the centre only
    x = SparseTensor.from_points(pts, torch.zeros(27, dtype=torch.long), feats, 1, (3, 3, 3))
    kernel = torch.arange(27.0).reshape(27, 1, 1)
    ours = SparseBackend().conv(x, kernel, 3).feats
    assert torch.equal(ours.flatten(), torch.arange(26.0, -1, -1))  # C order, offset = -(o - c)
    m = me.conv(me.prepare(x), kernel, 3)
    assert torch.equal(in_our_order(m, x), ours)


@needs_me
def test_prepare_keeps_our_rows_and_torch_threads():
    _, x = random_input()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = mk.MinkowskiBackend().prepare(x)
        assert torch.get_num_threads() == 1  # MinkowskiEngine would set it to the CPU count
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(m.st.C.long(), x.coords) and torch.equal(m.st.F, x.feats)


LAYERS = {
    "conv k3 s1": lambda b, x, w: b.conv(x, w["k3"], 3, 1),
    "conv k3 s2": lambda b, x, w: b.conv(x, w["k3"], 3, 2),
    "conv k2 s2": lambda b, x, w: b.conv(x, w["k2"], 2, 2),
    "max pool": lambda b, x, w: b.max_pool(x, 2, 2),
    "avg pool": lambda b, x, w: b.avg_pool(x, 2, 2),
    "instance norm": lambda b, x, w: b.instance_norm(x, w["scale"], w["shift"]),
    "conv s1 + max pool": lambda b, x, w: b.max_pool(b.relu(b.conv(x, w["k3"], 3, 1)), 2, 2),
}


@needs_me
@pytest.mark.parametrize("layer", list(LAYERS))
def test_layer_parity_outputs_and_gradients(layer):
    gen = torch.Generator().manual_seed(1)
    weights = {"k3": torch.randn(27, 3, 8, generator=gen), "k2": torch.randn(8, 3, 8, generator=gen),
               "scale": torch.randn(3, generator=gen), "shift": torch.randn(3, generator=gen)}
    weights = {k: v.requires_grad_(True) for k, v in weights.items()}
    results = []
    for backend in (SparseBackend(truncated=True), mk.MinkowskiBackend()):
        pts, x = random_input()
        out = LAYERS[layer](backend, backend.prepare(x), weights)
        feats = out.feats if isinstance(out, SparseTensor) else out.st.F
        # A fixed random "upstream gradient" per cell, keyed by cell so both row orders agree.
        cells = out.coords if isinstance(out, SparseTensor) else out.st.C.long()
        probe = torch.sin(cells.float() @ torch.tensor([1.0, 0.37, 0.71, 1.13]))[:, None]
        loss = (feats * probe * torch.linspace(-1, 1, feats.shape[1])).sum()
        grads = torch.autograd.grad(loss, [pts, *weights.values()], allow_unused=True)
        ours_rows = out if isinstance(out, SparseTensor) else None
        results.append((out, ours_rows, grads))
    (ours, _, g_ours), (theirs, _, g_theirs) = results
    close(in_our_order(theirs, ours), ours.feats)
    for a, b in zip(g_theirs, g_ours):
        assert (a is None) == (b is None)
        if b is not None:
            close(a, b)


@needs_me
@pytest.mark.parametrize("mode", ["avg", "sum", "max"])
def test_global_pool_and_to_dense_parity(mode):
    me = mk.MinkowskiBackend()
    pts, x = random_input(n=200, batch_size=4)
    ours = SparseBackend(truncated=True)
    close(me.global_pool(me.prepare(x), mode), ours.global_pool(x, mode))
    for stride in (1, 2):
        h = ours.max_pool(x, 2, 2) if stride == 2 else x
        m = me.prepare(x) if stride == 1 else me.max_pool(me.prepare(x), 2, 2)
        shape = ops.dense_shape(h)
        dense_me, dense_ours = me.to_dense(m, shape), ours.to_dense(h, shape)
        close(dense_me, dense_ours)
        (g_me,) = torch.autograd.grad(dense_me.square().sum(), pts, retain_graph=True)
        (g_ours,) = torch.autograd.grad(dense_ours.square().sum(), pts, retain_graph=True)
        close(g_me, g_ours)


def mnist_input(mnist, n: int = 16, start: int = 0):
    batch = mnist.train.batch(torch.arange(start, start + n), 250)
    pts = batch.points.clone().requires_grad_(True)
    x = encoding_of(make_config(preset="paper-sparse"))(PointBatch(pts, batch.cloud, n), mnist.domain.grid_shape, True)
    return pts, x, mnist.train.labels[start : start + n]


@needs_me
@pytest.mark.parametrize("depth,pooling", [(2, "max"), (3, "max"), (2, "avg")])
def test_paper_sparse_network_parity(mnist, depth, pooling):
    """Logits and gradients w.r.t. points (coordinates as features) and every weight."""
    results = []
    for backend in (SparseBackend(truncated=True), mk.MinkowskiBackend()):
        torch.manual_seed(0)
        net = SparseNet(3, 10, mnist.domain.grid_shape, depth=depth, width=16, pooling=pooling, backend=backend)
        pts, x, labels = mnist_input(mnist)
        logits = net(x)
        grads = torch.autograd.grad(F.cross_entropy(logits, labels), [pts, *net.parameters()])
        results.append((logits, grads))
    (l_ours, g_ours), (l_me, g_me) = results
    close(l_me, l_ours)
    for a, b in zip(g_me, g_ours):
        close(a, b)


@needs_me
def test_gradient_matching_parity_with_truncated_second_order(mnist):
    """The matching loss's gradient w.r.t. synthetic points: MinkowskiEngine == our truncated mode."""
    cfg = make_config(dict(width=16), preset="paper-sparse")
    results = []
    for name in ("torch", "minkowski"):
        net = build_distill_net(settings(NetSettings, cfg.replace(backend=name)), 3, mnist.domain.grid_shape, 10, seed=0)
        _, real, _ = mnist_input(mnist, 16)
        syn = init_synthetic("uniform", mnist.train, 10, mnist.domain, 1, 100, torch.Generator().manual_seed(0))[0]
        syn = syn[3:4].requires_grad_(True)
        enc = encoding_of(cfg)
        loss = gradient_match(net, real, torch.full((16,), 3), enc(PointBatch.from_padded(syn), mnist.domain.grid_shape, True),
                              torch.full((1,), 3), cfg.distance)
        results.append((loss.detach(), torch.autograd.grad(loss, syn)[0]))
    (loss_ours, g_ours), (loss_me, g_me) = results
    close(loss_me, loss_ours)
    assert g_ours.abs().max() > 0
    close(g_me, g_ours)


@needs_me
def test_short_distillation_gives_the_same_synthetic_set(mnist):
    cfg = make_config(dict(iterations=4, batch_real=8, width=16, points=60, log_every=1), preset="paper-sparse")
    grid = mnist.domain.grid_shape
    start = init_synthetic("uniform", mnist.train, 10, mnist.domain, 1, cfg.points, torch.Generator().manual_seed(0))[0]
    finals = {}
    for name in ("torch", "minkowski"):
        syn = start.clone()
        distill(distill_settings(cfg), settings(NetSettings, cfg.replace(backend=name)), mnist.train, 10, mnist.domain, syn,
                torch.device("cpu"))
        finals[name] = syn
    moved = (finals["torch"] - start).abs().max().item()
    assert moved > 1e-2  # the points did move...
    torch.testing.assert_close(finals["minkowski"], finals["torch"], rtol=0, atol=SYN_ATOL)  # ...the same way
