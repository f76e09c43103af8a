"""The distillation loop: move synthetic points so that they match real data under random networks.

Per iteration (DC's schedule, with the paper's defaults of one outer and one inner step): keep
the points inside their domain, pick the network (one fixed for the run, a fresh one, or a
freshly pretrained one every few iterations), then for each outer step accumulate over classes
the matching loss between a real batch of the class and the class's synthetic clouds, take one
optimizer step on the coordinates, and (between outer steps) train the network on the synthetic
set for ``inner_loop`` steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..core.seeding import stream
from ..core.types import Clouds, Domain, PointBatch
from ..data.points import augment_clouds
from ..nets import NetSettings, build_distill_net
from .augment import sample_transform
from .encoding import Encoding
from .matching import OBJECTIVES
from .morph import blends
from .synthetic import snap

Report = Callable[[dict], None]


@dataclass(frozen=True)
class DistillSettings:
    """How the synthetic points are optimised (the config keys of the same names)."""

    seed: int = 0
    iterations: int = 1250
    matching: str = "gradient"  # a name in matching.OBJECTIVES: gradient | distribution
    distance: str = "sum_of_squares"
    dm_var_weight: float = 0.0
    dm_embedding: str = "pooled"  # pooled | quantiles (PointNet)
    dm_quantiles: int = 16
    ce_weight: float = 0.0
    encoding: Encoding = field(default_factory=Encoding)
    voxel_res: int = 32  # voxel networks on the unit ball: cells per axis
    network: str = "fixed"  # fixed | resample | pretrained
    pretrain_steps: int = 100
    pretrain_refresh: int = 50
    outer_loop: int = 1
    inner_loop: int = 1
    lr_net: float = 0.01
    optimizer: str = "sgd"
    lr: float = 0.1
    mix_lr: float = 10.0  # the optimizer's step size on the blends' logits (``morph``)
    momentum: float = 0.5
    lr_schedule: str = "constant"
    batch_real: int = 256
    real_cap: int | None = 250
    augment: bool = False
    aug_rotate: float = 15.0
    aug_scale: float = 0.1
    aug_translate: float = 0.1
    aug_jitter: float = 0.0
    aug_kind: str = "dsa"  # dsa | evaluator (see Distillation.augmented)
    snap_every: int = 0
    snap_final: bool = False
    log_every: int = 10
    eval_at: tuple[int, ...] = ()


class IterationLog:
    """The history rows of one optimisation loop: every ``every`` iterations and the last one.

    Each row carries the loop's values, the seconds per iteration since the previous row and
    since the start; ``first`` numbers the rows on from an earlier loop (trajectory matching
    continues the distillation's count). Rows also go to ``report`` (the CLI's progress bar, a
    Tune trial) as they come.
    """

    def __init__(self, every: int, iterations: int, report: Report | None, first: int = 0) -> None:
        self.every, self.final, self.report, self.first = every, iterations - 1, report, first
        self.rows: list[dict] = []
        self.started = self.last = time.perf_counter()
        self.last_it = -1

    def due(self, it: int) -> bool:
        return it % self.every == 0 or it == self.final

    def add(self, it: int, **values: float) -> None:
        now = time.perf_counter()
        row = {"iteration": self.first + it, **values,
               "sec_per_iter": (now - self.last) / max(1, it - self.last_it), "elapsed": now - self.started}
        self.last, self.last_it = now, it
        self.rows.append(row)
        if self.report is not None:
            self.report(dict(row))


def snap_points(encoding: Encoding, syn: torch.Tensor, grid_shape: tuple[int, ...]) -> None:
    """Move every point of ``syn`` onto distinct top cells of its cloud's soft splat (see ``snap``).

    The splat is the settings' (kernel, sigma, combine) whatever encoding the matching uses:
    snapping is about the evaluator's binary render, not the network's input.
    """
    soft = Encoding("splat", encoding.kernel, encoding.sigma, encoding.combine)
    with torch.no_grad():
        occupancy = soft(PointBatch.from_padded(syn), grid_shape, sparse=False)[:, 0]
        syn.copy_(snap(syn, occupancy))


class _Networks:
    """The distillation network policy: fixed, resampled every iteration, or periodically pretrained."""

    def __init__(self, cfg: DistillSettings, make: Callable[[int], torch.nn.Module],
                 pretrain: Callable[[torch.nn.Module, int], None]):
        self.cfg, self.make, self.pretrain = cfg, make, pretrain
        self.net: torch.nn.Module | None = None

    def at(self, it: int) -> torch.nn.Module:
        cfg = self.cfg
        seed = stream(cfg.seed, f"net/{it}")
        if cfg.network == "fixed" and self.net is None:
            self.net = self.make(stream(cfg.seed, "net"))
        elif cfg.network == "resample":
            self.net = self.make(seed)
        elif cfg.network == "pretrained" and (self.net is None or it % cfg.pretrain_refresh == 0):
            self.net = self.make(seed)
            self.pretrain(self.net, seed)
        return self.net


class Distillation:
    """One distillation's state, set up once (``__init__``) and advanced one iteration at a time
    (``step``); ``finish`` leaves the points in their domain (snapped if asked). ``distill`` runs
    it and logs it."""

    def __init__(self, cfg: DistillSettings, net_settings: NetSettings, clouds: Clouds, num_classes: int,
                 domain: Domain, syn: torch.Tensor, device: torch.device, mix: torch.Tensor | None = None) -> None:
        self.cfg, self.num_classes, self.domain, self.syn, self.device = cfg, num_classes, domain, syn, device
        self.mix = mix
        self.encoding, self.sparse = cfg.encoding, net_settings.family == "sparse"
        self.grid_shape, self.scale, self.offset = domain.voxels(cfg.voxel_res)
        in_channels = self.encoding.in_channels(domain.dims)
        self.clouds = clouds = clouds.to(device)
        self.by_class = [clouds.members(c) for c in range(num_classes)]
        self.real_gen = torch.Generator().manual_seed(stream(cfg.seed, "real"))
        self.aug_gen = torch.Generator().manual_seed(stream(cfg.seed, "augment"))
        self.objective = OBJECTIVES[cfg.matching](cfg)

        def make(seed: int) -> torch.nn.Module:
            return build_distill_net(net_settings, in_channels, self.grid_shape, num_classes, seed).to(device)

        self.networks = _Networks(cfg, make, self.pretrain)
        syn.requires_grad_(True)
        groups: list[dict] = [{"params": [syn]}]
        if mix is not None:
            groups.append({"params": [mix.requires_grad_(True)], "lr": cfg.mix_lr})
        self.opt = (torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum) if cfg.optimizer == "sgd"
                    else torch.optim.Adam(groups, lr=cfg.lr))
        self.schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=max(1, cfg.iterations))
                         if cfg.lr_schedule == "cosine" else None)
        self.clouds_per_class = len(syn) // num_classes

    def training_clouds(self, c: int) -> torch.Tensor:
        """Class ``c``'s synthetic clouds as the evaluator will train on them: its stored clouds,
        then (with ``mix``) their blends (``morph.blends``)."""
        n = self.clouds_per_class
        anchors = self.syn[c * n : (c + 1) * n]
        if self.mix is None:
            return anchors
        m = len(self.mix) // self.num_classes
        return torch.cat([anchors, blends(anchors, self.mix[c * m : (c + 1) * m])])

    def encode(self, batch: PointBatch):
        return self.encoding(batch.affine(self.scale, self.offset), self.grid_shape, self.sparse)

    def real_batch(self, c: int, n: int) -> PointBatch:
        members = self.by_class[c]
        pick = members[torch.randperm(len(members), generator=self.real_gen)[:n].to(self.device)]
        return self.clouds.batch(pick, self.cfg.real_cap)

    def augmented(self, real: PointBatch, mine: PointBatch) -> tuple[PointBatch, PointBatch]:
        """The real batch and a class's synthetic clouds under this step's augmentation.

        ``dsa``: one ``sample_transform`` for both, so matching compares like with like (DSA).
        ``evaluator``: every cloud its own draw of the 3D evaluator's training augmentation
        (``data.points.augment_clouds``: scale, shift, jitter), the real clouds first; the
        objective then matches the augmented distributions, so the set is learned for the way the
        classifiers that judge it are trained on it.
        """
        cfg = self.cfg
        if cfg.aug_kind == "evaluator":
            up = self.domain.up
            real = PointBatch.from_padded(augment_clouds(real.padded(), self.aug_gen, up, rotate=False))
            return real, PointBatch.from_padded(augment_clouds(mine.padded(), self.aug_gen, up, rotate=False))
        t = sample_transform(self.domain, cfg.aug_rotate, cfg.aug_scale, cfg.aug_translate, cfg.aug_jitter, self.aug_gen)
        return t(real), t(mine)

    def pretrain(self, net: torch.nn.Module, seed: int) -> None:
        """Train a fresh network on real batches of all classes (the paper's proposed future work)."""
        cfg, clouds = self.cfg, self.clouds
        opt = torch.optim.SGD(net.parameters(), lr=cfg.lr_net, momentum=0.9)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(cfg.pretrain_steps):
            pick = torch.randperm(len(clouds), generator=gen)[: cfg.batch_real].to(self.device)
            loss = F.cross_entropy(net(self.encode(clouds.batch(pick, cfg.real_cap))), clouds.labels[pick])
            opt.zero_grad()
            loss.backward()
            opt.step()

    def step(self, it: int) -> dict[str, float]:
        """One iteration: keep the points in their domain, pick the network, then per outer step
        one optimizer step on the summed per-class objective. Returns what the log shows."""
        cfg, syn, domain, device = self.cfg, self.syn, self.domain, self.device
        domain.project(syn)
        if cfg.snap_every and it > 0 and it % cfg.snap_every == 0:
            snap_points(self.encoding, syn, self.grid_shape)
            self.opt.state.clear()  # momentum belonged to the points' old places
        net = self.networks.at(it)
        for outer in range(cfg.outer_loop):
            loss = syn.new_zeros(())
            for c in range(self.num_classes):
                real = self.real_batch(c, cfg.batch_real)
                mine = PointBatch.from_padded(self.training_clouds(c))
                if cfg.augment:
                    real, mine = self.augmented(real, mine)
                    if domain.grid_shape is not None and not _any_inside(mine, self.grid_shape):
                        # Points are clamped into the grid, so only a cloud collapsed onto its border
                        # can be moved wholly outside it; it would have no splat to match.
                        raise FloatingPointError(f"class {c}'s synthetic points all sit on the grid's border, and the "
                                                 f"augmentation moved every one outside it at iteration {it}; lower lr")
                y_real, y_syn = torch.full((real.size,), c, device=device), torch.full((mine.size,), c, device=device)
                loss = loss + self.objective(net, self.encode(real), y_real, self.encode(mine), y_syn)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"matching loss is {loss.item()} at iteration {it}; lower lr")
            before = syn.detach().clone()
            self.opt.zero_grad()
            loss.backward()
            grad_abs = syn.grad.abs().mean().item()
            self.opt.step()
            if not torch.isfinite(syn).all():
                raise FloatingPointError(f"synthetic coordinates are not finite after iteration {it}; lower lr")
            delta_abs = (syn.detach() - before).abs().mean().item()
            if outer == cfg.outer_loop - 1:
                break
            with torch.no_grad():
                clouds = torch.cat([self.training_clouds(c) for c in range(self.num_classes)])
            _train_on_synthetic(net, self.encode, clouds, self.num_classes, len(clouds) // self.num_classes,
                                cfg.inner_loop, cfg.lr_net, device)
        if self.schedule is not None:
            self.schedule.step()
        return {"loss": loss.item(), "grad_abs": grad_abs, "delta_abs": delta_abs}

    def finish(self) -> None:
        self.domain.project(self.syn)
        if self.cfg.snap_final and self.cfg.iterations > 0:  # a baseline (no iterations) stays the real clouds it picked
            snap_points(self.encoding, self.syn, self.grid_shape)
        self.syn.requires_grad_(False)
        if self.mix is not None:
            self.mix.requires_grad_(False)


def distill(
    cfg: DistillSettings,
    net_settings: NetSettings,
    clouds: Clouds,
    num_classes: int,
    domain: Domain,
    syn: torch.Tensor,
    device: torch.device,
    report: Report | None = None,
    evaluate_at: Callable[[int, torch.Tensor], None] | None = None,
    mix: torch.Tensor | None = None,
) -> list[dict]:
    """Optimise ``syn`` (num_classes * clouds per class, P, D) in place, and with ``mix`` the
    logits of its blends (``morph.blends``: num_classes * blends per class rows); return the
    logged history.

    ``clouds`` are the real training clouds the distillation may see (never validation or test).
    ``evaluate_at(iteration, points)`` is called at each iteration listed in ``cfg.eval_at``.
    """
    run = Distillation(cfg, net_settings, clouds, num_classes, domain, syn, device, mix)
    log = IterationLog(cfg.log_every, cfg.iterations, report)
    for it in range(cfg.iterations):
        if evaluate_at is not None and it in cfg.eval_at:
            evaluate_at(it, syn.detach())
        values = run.step(it)
        if log.due(it):
            log.add(it, **values)
    run.finish()
    return log.rows


def _any_inside(batch: PointBatch, grid_shape: tuple[int, ...]) -> bool:
    """Whether some point is less than a cell from the inside of the grid on every free axis,
    i.e. whether its linear splat reaches a cell."""
    free = [axis for axis, extent in enumerate(grid_shape) if extent > 1]
    p = batch.points.detach()[:, free]
    hi = torch.tensor([grid_shape[axis] for axis in free], dtype=p.dtype, device=p.device)
    return bool(((p > -1) & (p < hi)).all(1).any())


def _train_on_synthetic(net, encode, syn, num_classes, per_class, steps, lr, device) -> None:
    """DC's inner loop: a few SGD steps of the network on the (fixed) synthetic set."""
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    labels = torch.arange(num_classes, device=device).repeat_interleave(per_class)
    batch = PointBatch.from_padded(syn)
    for _ in range(steps):
        loss = F.cross_entropy(net(encode(batch)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
