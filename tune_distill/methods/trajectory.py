"""Trajectory matching (MTT): refine synthetic points so that training on them retraces training on real data.

Experts are the evaluator's kind of network trained by plain SGD on the real training clouds
with the evaluator's augmentation; their parameters every ``tm_expert_every`` steps form a
trajectory. On images they are ConvNets on the rendered digits (the distillation network's width
and depth); on 3D shapes they are the networks ``nets`` names (PointNet with BatchNorm of the
settings' ``width``, ``depth`` and ``head``, DGCNN or PointNet++ of ``width``: the recipe passes
the evaluator's) on the real shapes (with ``real_match``, thinned as the synthetic clouds are),
under the evaluator's scale / shift / jitter. With several ``nets`` the iterations take them in
turn, each with its own experts and learnt step size, so that the set is not one only a single
architecture learns from. Each iteration picks an expert and a start checkpoint t, trains a copy
from there for ``tm_syn_steps`` steps on the synthetic clouds (images on MNIST), differentiably
and with a learnt step size, and moves the points to shrink
||theta_student - theta_{t+span}||^2 / ||theta_t - theta_{t+span}||^2.

It runs after the main objective (``tm_iterations`` > 0), from the points that objective left.
Distribution matching matches what real and synthetic digits look like to a network; this asks
what a network learns from them, which is what the evaluator measures.

Experts depend on the real data and their own settings, never on the run's seed, so they are
trained once and cached on disk (as MTT's expert buffer); every seed and trial shares them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..core.cache import cache_path, cached
from ..core.seeding import seeded, stream
from ..core.types import Clouds, Domain, PointBatch
from ..data.image import dc_augment, render
from ..data.points import augment_clouds
from ..nets import ConvNet, build_point_classifier
from .encoding import Encoding
from .loop import IterationLog, Report, snap_points

Trajectory = list[list[torch.Tensor]]  # checkpoints, each the network's parameters in order
EXPERT_CODE = ("methods.trajectory", "nets.convnet", "nets.pointnet", "data.image", "data.points", "core.types")  # what trains the experts


@dataclass(frozen=True)
class TrajectorySettings:
    """Trajectory matching's settings (the ``tm_*`` config keys and the few others it reads)."""

    seed: int = 0
    first_iteration: int = 0  # history rows continue the distillation's count
    iterations: int = 0
    experts: int = 4
    expert_steps: int = 800
    expert_every: int = 50
    expert_lr: float = 0.03
    expert_batch: int = 256
    width: int = 128
    depth: int = 3
    head: tuple[int, ...] = (256,)  # PointNet experts' hidden head widths
    nets: tuple[str, ...] = ("pointnet",)  # 3D: the experts' architectures, taken in turn
    syn_steps: int = 10
    span: int = 2
    max_start: int = 8
    lr: float = 0.01
    syn_lr: float = 0.03
    lr_lr: float = 0.01
    real_cap: int | None = 250
    augment: bool = False
    encoding: Encoding = Encoding("splat")
    snap_final: bool = False
    log_every: int = 10


def _expert_spec(cfg: TrajectorySettings, data_id: dict) -> dict:
    """What the experts depend on besides the real clouds they train on: their own settings, the
    data's identity and the code that trains them."""
    keys = ("real_cap", "width", "depth", "head", "expert_batch", "experts", "expert_steps", "expert_every", "expert_lr")
    return {k: getattr(cfg, k) for k in keys} | data_id


class _Kind:
    """What the experts and the student train on, for a domain: the input tensor of a set of
    clouds, the network (``net``, on 3D shapes), and the evaluator's augmentation of a batch."""

    def __init__(self, cfg: TrajectorySettings, domain: Domain, num_classes: int, net: str = "pointnet"):
        self.cfg, self.domain, self.num_classes, self.net = cfg, domain, num_classes, net
        self.grid_shape = domain.grid_shape
        self.free = [g for g in self.grid_shape if g > 1] if self.grid_shape is not None else []

    def real(self, clouds: Clouds, chunk: int = 5000) -> torch.Tensor:
        """Every real cloud as the network's input: (N, 1, H, W) images, or (N, P, 3) points."""
        if self.grid_shape is None:
            return clouds.batch(torch.arange(len(clouds)), self.cfg.real_cap).padded()
        return torch.cat([render(clouds.batch(torch.arange(i, min(i + chunk, len(clouds))), self.cfg.real_cap),
                                 self.grid_shape) for i in range(0, len(clouds), chunk)])

    def synthetic(self, syn: torch.Tensor) -> torch.Tensor:
        """The synthetic clouds as the network's input, differentiably."""
        if self.grid_shape is None:
            return syn
        return self.cfg.encoding(PointBatch.from_padded(syn), self.grid_shape, False).reshape(len(syn), 1, *self.free)

    def network(self) -> torch.nn.Module:
        cfg = self.cfg
        if self.grid_shape is not None:
            return ConvNet(1, self.num_classes, self.free[-1], cfg.width, cfg.depth)
        return build_point_classifier(self.net, self.domain.dims, self.num_classes, cfg.width, cfg.depth, cfg.head)

    def augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.grid_shape is None:
            return augment_clouds(x, gen, self.domain.up, rotate=False)
        return dc_augment(x, gen)


def train_experts(cfg: TrajectorySettings, clouds: Clouds, domain: Domain, num_classes: int,
                  data_id: dict | None = None, net: str = "pointnet") -> list[Trajectory]:
    """``experts`` trajectories of the ``net`` architecture (3D shapes; images train ConvNets) on
    the real clouds, from the disk cache when it has them.

    ``data_id`` names the data (dataset and its options) in the cache key. Trained on the CPU:
    the cache is shared by every device, and CPU runs are reproducible.
    """
    kind = _Kind(cfg, domain, num_classes, net)
    spec = _expert_spec(cfg, data_id or {}) | ({} if domain.grid_shape is not None else {"net": net})
    return cached(cache_path("experts", spec, clouds, EXPERT_CODE), lambda: _train_experts(kind, clouds))


def _train_experts(kind: _Kind, clouds: Clouds) -> list[Trajectory]:
    cfg = kind.cfg
    inputs, labels = kind.real(clouds.to("cpu")), clouds.labels.cpu()
    experts = []
    for e in range(cfg.experts):
        seed = stream(0, f"expert/{e}")  # not the run's seed: experts are shared by all runs
        gen = torch.Generator().manual_seed(seed)
        net = seeded(seed, kind.network)
        opt = torch.optim.SGD(net.parameters(), lr=cfg.expert_lr)
        trajectory = [[p.detach().clone() for p in net.parameters()]]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # DGCNN's and PointNet++'s dropout draw from the global generator
            for step in range(1, cfg.expert_steps + 1):
                idx = torch.randint(len(inputs), (cfg.expert_batch,), generator=gen)
                loss = F.cross_entropy(net(kind.augment(inputs[idx], gen)), labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                if step % cfg.expert_every == 0:
                    trajectory.append([p.detach().clone() for p in net.parameters()])
        experts.append(trajectory)
    return experts


def match_trajectories(cfg: TrajectorySettings, clouds: Clouds, num_classes: int, domain: Domain,
                       syn: torch.Tensor, labels: torch.Tensor, device: torch.device,
                       report: Report | None = None, data_id: dict | None = None) -> list[dict]:
    """Refine ``syn`` (num_classes * clouds per class, P, D) in place for ``iterations``; return the history.

    ``clouds`` are the real clouds the experts train on (with ``real_match``, thinned as ``syn`` was).
    History rows continue ``distill``'s iteration count and carry the student's learnt step size.
    """
    nets = cfg.nets if domain.grid_shape is None else ("convnet",)
    kinds = [_Kind(cfg, domain, num_classes, name) for name in nets]
    experts = [[[[p.to(device) for p in ckpt] for ckpt in t]
                for t in train_experts(cfg, clouds, domain, num_classes, data_id, kind.net)] for kind in kinds]
    with torch.random.fork_rng(devices=[]):
        students = [kind.network().to(device) for kind in kinds]  # parameters come from experts
    names = [[name for name, _ in net.named_parameters()] for net in students]
    gen = torch.Generator().manual_seed(stream(cfg.seed, "trajectory"))
    labels = labels.to(device)
    log_lrs = [torch.tensor(math.log(cfg.syn_lr), device=device, requires_grad=True) for _ in kinds]
    syn.requires_grad_(True)
    opt = torch.optim.Adam([syn], lr=cfg.lr)
    opt_lr = torch.optim.Adam(log_lrs, lr=cfg.lr_lr)  # a net's step size moves only on its own turns
    log = IterationLog(cfg.log_every, cfg.iterations, report, first=cfg.first_iteration)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(stream(cfg.seed, "trajectory/dropout"))
        for it in range(cfg.iterations):
            turn = it % len(kinds)
            kind, net, log_lr = kinds[turn], students[turn], log_lrs[turn]
            trajectory = experts[turn][int(torch.randint(len(experts[turn]), (1,), generator=gen))]
            t = int(torch.randint(cfg.max_start + 1, (1,), generator=gen))
            start, target = trajectory[t], trajectory[t + cfg.span]
            params = [p.clone().requires_grad_(True) for p in start]
            inputs = kind.synthetic(syn)
            for _ in range(cfg.syn_steps):
                x = kind.augment(inputs, gen) if cfg.augment else inputs
                out = functional_call(net, dict(zip(names[turn], params)), (x,))
                grads = torch.autograd.grad(F.cross_entropy(out, labels), params, create_graph=True)
                params = [p - log_lr.exp() * g for p, g in zip(params, grads)]
            covered = sum(((p - q) ** 2).sum() for p, q in zip(params, target))
            expert_span = sum(((p - q) ** 2).sum() for p, q in zip(start, target))
            loss = covered / expert_span
            if not torch.isfinite(loss):
                raise FloatingPointError(f"trajectory loss is {loss.item()} at iteration {it}; lower tm_syn_lr or tm_lr")
            before = syn.detach().clone()
            opt.zero_grad()
            opt_lr.zero_grad()
            loss.backward()
            grad_abs = syn.grad.abs().mean().item()
            opt.step()
            opt_lr.step()
            with torch.no_grad():
                domain.project(syn)
            if log.due(it):
                steps = {f"tm_syn_lr{'' if i == 0 else '_' + kinds[i].net}": v.exp().item() for i, v in enumerate(log_lrs)}
                log.add(it, loss=loss.item(), grad_abs=grad_abs, delta_abs=(syn.detach() - before).abs().mean().item(),
                        **steps)
    if cfg.snap_final:
        snap_points(cfg.encoding, syn, domain.grid_shape)
    syn.requires_grad_(False)
    return log.rows
