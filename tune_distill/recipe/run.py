"""The recipe: one distillation plus its evaluation, from a validated ``Config``. No Ray here.

This is the one place that reads the whole config: it maps it onto each component's plain
settings (``NetSettings``, ``DistillSettings``, ``TrajectorySettings``, ``EvalSettings``) and
wires the components. ``run(config, report)`` goes one way: it loads (or takes) the dataset and
carves out the validation split, builds the first stage (the initial synthetic set distilled by
the matching objective; from the disk cache when trajectory matching follows and an earlier run
of the same seed and settings computed it), refines it by trajectory matching when
``tm_iterations`` > 0, evaluates it with the dataset's evaluator and returns a ``RunResult``.
With ``iterations=0`` it evaluates the initial set itself, which is how the baselines (random
real clouds, herding, k-center, class-mean top-k) are measured by the very same evaluator.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, TypeVar

import numpy as np
import torch

from ..core.cache import cache_path, cached
from ..core import portable
from ..core.errors import UserError
from ..core.seeding import stream
from ..core.types import Clouds, Domain
from ..data import Dataset, dataset_spec, hold_out, kept_indices, load_dataset
from ..evaluate import EvalSettings, Evaluator, build_evaluator
from ..evaluate.point import EVAL_BATCH, train_one
from ..methods.encoding import Encoding
from ..methods.loop import DistillSettings, Report, distill
from ..methods.morph import aligned, expanded
from ..methods.synthetic import init_synthetic, thinned_clouds
from ..methods.trajectory import TrajectorySettings, match_trajectories
from ..nets import NetSettings
from .config import Config

VAL_SPLIT_SEED = 20240531  # fixed, so every run and trial holds out the same clouds
# What a first stage (the points before trajectory matching) is computed by: run() builds it too.
STAGE_CODE = ("methods", "nets", "sparse", "core", "data", "recipe.run")

S = TypeVar("S")


@dataclass
class RunResult:
    """What one run produced: the synthetic set, its history and its evaluation."""

    config: Config
    points: np.ndarray  # (N, P, D) float32: grid coordinates (MNIST: depth, height, width) or the unit ball's xyz
    labels: np.ndarray  # (N,) int64
    history: list[dict]
    accuracies: list[float]
    split: str  # the set the accuracies were measured on: test | val
    domain: Domain  # where the points live (how to draw them)
    class_names: tuple[str, ...] = ()
    # The same trained classifiers scored on other splits: "val" when the primary split is test and
    # val_size > 0 (the test set is never scored when selecting on val).
    other_accuracies: dict[str, list[float]] = field(default_factory=dict)
    evaluations: list[dict] = field(default_factory=list)  # intermediate (eval_at) evaluations
    # A selection (real shapes picked and thinned, never moved): the index in the dataset's training
    # split of the shape behind each cloud; None when the points were learned or not real shapes.
    picks: np.ndarray | None = None
    # With morphs: the logits of the blends of ``points`` (``methods.morph``), float32 (N blends,
    # cloud_split); the evaluator trains on ``training_set()``.
    mix: np.ndarray | None = None
    seconds: float = 0.0
    distill_seconds: float = 0.0
    eval_seconds: float = 0.0

    @property
    def acc_mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def acc_std(self) -> float:
        return float(np.std(self.accuracies))

    @property
    def stored_points(self) -> float:
        """Points the synthetic set stores per class (``ipc x points`` for a distilled set)."""
        return float(self.points.shape[0] * self.points.shape[1] / len(np.unique(self.labels)))

    @property
    def stored_floats(self) -> float:
        """Floats the synthetic set stores per class: every stored coordinate (3 per point), and
        every logit of its blends."""
        mixed = 0 if self.mix is None else self.mix.size
        return float((self.points.size + mixed) / len(np.unique(self.labels)))

    def training_set(self) -> tuple[np.ndarray, np.ndarray]:
        """The clouds the evaluator trains on: the stored ones, then their blends (with ``mix``)."""
        mix = None if self.mix is None else torch.from_numpy(self.mix)
        points, labels = expanded(torch.from_numpy(self.points), torch.from_numpy(self.labels), mix)
        return points.numpy(), labels.numpy()

    def metrics(self) -> dict:
        """The summary written to ``metrics.json`` and reported to Tune."""
        out = {
            "acc_mean": self.acc_mean, "acc_std": self.acc_std, "accuracies": list(self.accuracies),
            "split": self.split, "seconds": self.seconds, "distill_seconds": self.distill_seconds,
            "eval_seconds": self.eval_seconds, "evaluations": self.evaluations,
            "stored_points": self.stored_points, "stored_floats": self.stored_floats,
        }
        for name, accs in self.other_accuracies.items():
            out[f"{name}_acc_mean"] = float(np.mean(accs))
            out[f"{name}_accuracies"] = list(accs)
        out["evaluator"] = evaluator_record(self.config)
        return out


def settings(cls: type[S], cfg: Config, prefix: str = "", **extra: Any) -> S:
    """``cls`` filled from the config: each field from the key ``prefix + name`` if there is one,
    else from the key ``name`` (``extra`` wins over both)."""
    values = {}
    for f in fields(cls):
        if f.name in extra:
            continue
        for key in (prefix + f.name, f.name):
            if key in Config.model_fields:
                values[f.name] = getattr(cfg, key)
                break
    return cls(**values, **extra)


def encoding_of(cfg: Config) -> Encoding:
    return Encoding(cfg.encoding, cfg.splat_kernel, cfg.splat_sigma, cfg.splat_combine, cfg.straight_through)


def real_cap(cfg: Config) -> int | None:
    """Points kept of each real cloud: with ``real_match`` at most the synthetic clouds' size."""
    return min(cfg.real_cap or cfg.cloud_points, cfg.cloud_points) if cfg.real_match else cfg.real_cap


def distill_settings(cfg: Config) -> DistillSettings:
    return settings(DistillSettings, cfg, encoding=encoding_of(cfg), eval_at=tuple(cfg.eval_at), real_cap=real_cap(cfg))


def trajectory_settings(cfg: Config) -> TrajectorySettings:
    # The experts train as the evaluator will: its batch size, and on 3D shapes its width.
    shape = {} if dataset_spec(cfg.dataset).kind == "image" else dict(
        width=cfg.eval_width, depth=cfg.eval_depth, head=tuple(cfg.eval_head), real_cap=real_cap(cfg),
        nets=tuple(cfg.tm_nets))
    return settings(TrajectorySettings, cfg, "tm_", first_iteration=cfg.iterations, expert_batch=cfg.eval_batch,
                    encoding=encoding_of(cfg), **shape)


def matched_clouds(cfg: Config, train: Clouds) -> Clouds:
    """The real clouds the synthetic ones are compared with: with ``real_match``, thinned to the
    synthetic clouds' size the way the init thinned them (the same for every use in a run)."""
    if not (cfg.real_match and cfg.init_sampling != "random"):
        return train
    thin_gen = torch.Generator().manual_seed(stream(cfg.seed, "thin"))
    return thinned_clouds(train, cfg.cloud_points, thin_gen, cfg.init_sampling)


def eval_settings(cfg: Config) -> EvalSettings:
    return settings(EvalSettings, cfg, "eval_", channels=tuple(cfg.eval_channels), head=tuple(cfg.eval_head))


def evaluator_record(cfg: Config) -> dict[str, Any]:
    """Every resolved evaluation value of ``cfg`` (its ``eval_*`` keys, the protocol and the net
    among them): what a metrics.json records of how its scores were obtained."""
    return {k: v for k, v in cfg.model_dump().items() if k.startswith("eval_")}


def dataset_options(cfg: Config) -> dict[str, Any]:
    """The loader options the config sets for its dataset (MNIST's threshold; none for ModelNet)."""
    return {key: getattr(cfg, key) for key in dataset_spec(cfg.dataset).options}


def load_data(cfg: Config, data_dir: str | None = None) -> Dataset:
    """The config's dataset, loaded from ``data_dir`` (else the environment or the cache)."""
    return load_dataset(cfg.dataset, data_dir, **dataset_options(cfg))


def split_train(data: Dataset, val_size: int) -> tuple[Clouds, Clouds | None]:
    """(clouds the distillation may use, validation clouds): a fixed hold-out of the training set."""
    return hold_out(data.train, val_size, data.num_classes, VAL_SPLIT_SEED, data.stratified_val)


def train_indices(data: Dataset, val_size: int) -> torch.Tensor:
    """Where each cloud ``split_train`` keeps sits in the dataset's training split."""
    return kept_indices(data.train, val_size, data.num_classes, VAL_SPLIT_SEED, data.stratified_val)


def init_generator(seed: int) -> torch.Generator:
    """The random stream an initial set draws from (a stored selection is rebuilt from it too)."""
    return torch.Generator().manual_seed(stream(seed, "init"))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA device is visible; use device=cpu or device=auto")
    return torch.device(name)


def evaluation_splits(cfg: Config, data: Dataset, val: Clouds | None) -> dict[str, Clouds]:
    """The clouds a synthetic set is judged on, primary split first.

    Selecting on val scores validation clouds only; a test evaluation also scores the
    validation clouds when there are any (free: the same trained classifiers).
    """
    names = ["val"] if cfg.eval_split == "val" else ["test"] + (["val"] if val is not None else [])
    splits = {}
    for name in names:
        clouds = val if name == "val" else data.test
        n = len(clouds) if cfg.eval_test_size is None else min(cfg.eval_test_size, len(clouds))
        splits[name] = clouds.subset(torch.arange(n))
    return splits


def make_evaluator(cfg: Config, data: Dataset, val: Clouds | None, device: torch.device,
                   per_class: bool = False) -> Evaluator:
    """The dataset's evaluator under the config's ``eval_*`` protocol. ``per_class`` also scores the
    same trained models on each class's clouds of each split, as ``"<split>/<class index>"``
    (scoring draws nothing random: the split scores do not change)."""
    splits = evaluation_splits(cfg, data, val)
    if per_class:
        splits |= {f"{name}/{k}": c.subset(torch.nonzero(c.labels == k)[:, 0])
                   for name, c in list(splits.items()) for k in range(data.num_classes) if (c.labels == k).any()}
    return build_evaluator(dataset_spec(cfg.dataset).evaluator, data.domain, data.num_classes, splits,
                           eval_settings(cfg), device)


def evaluate_set(cfg: Config, points: np.ndarray, labels: np.ndarray, data: Dataset,
                 report: Report | None = None, per_class: bool = False) -> dict[str, list[float]]:
    """Accuracies per split of ``cfg``'s evaluator on a given synthetic set (``points`` (N, P, D) in
    the dataset's frame, ``labels`` (N,)), exactly as ``run`` scores the set it distils: the same
    splits, models and random streams, so a saved run is re-scored to the bit on the same CPU
    (``per_class``: see ``make_evaluator``)."""
    check_data(cfg, data)
    if points.ndim != 3 or points.shape[2] != data.domain.dims or labels.shape != (points.shape[0],):
        raise UserError(f"a synthetic set needs points (N, P, {data.domain.dims}) and labels (N,); "
                        f"got {points.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= data.num_classes):
        raise UserError(f"labels must lie in 0..{data.num_classes - 1} for {data.name}; got {labels.min()}..{labels.max()}")
    device = resolve_device(cfg.device)
    _, val = split_train(data, cfg.val_size)
    evaluator = make_evaluator(cfg, data, val, device, per_class)
    progress = (lambda done, total: report({"eval_done": done, "eval_total": total})) if report else None
    return evaluator(torch.from_numpy(np.ascontiguousarray(points, np.float32)), torch.from_numpy(labels.astype(np.int64)),
                     eval_seed(cfg), progress)


FEATURE_POINTS = 256  # points per real shape when training and reading init_features=pointnet's network
FEATURE_BATCH = 32


def init_features(cfg: Config, train: Clouds, data: Dataset, device: torch.device) -> torch.Tensor | None:
    """Herding's / k-center's space: None (occupancy), or with ``init_features=pointnet`` every
    training cloud's pooled features under a PointNet trained on those clouds (the evaluator's
    network and recipe), as herding baselines use a trained network's features."""
    if cfg.init_features == "occupancy" or cfg.init not in ("herding", "kcenter"):
        return None
    seed = stream(cfg.seed, "features")
    x = train.resampled(torch.arange(len(train)), FEATURE_POINTS, torch.Generator().manual_seed(seed)).to(device)
    settings = replace(eval_settings(cfg), models=1, epochs=cfg.init_feature_epochs, batch=FEATURE_BATCH, net="pointnet")
    net = train_one(x, train.labels.to(device), data.num_classes, settings, seed, data.domain.up).eval()
    with torch.no_grad():
        return torch.cat([net.embed(chunk) for chunk in x.split(EVAL_BATCH)]).cpu()


def initial_set(cfg: Config, train: Clouds, data: Dataset,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(points, labels, picks)``: the set ``cfg.init`` makes from ``train`` before any
    distillation (``methods.synthetic.init_synthetic``), from the seed's own random stream."""
    return init_synthetic(cfg.init, train, data.num_classes, data.domain, cfg.clouds_per_class, cfg.cloud_points,
                          init_generator(cfg.seed), cfg.init_noise, cfg.real_cap, sampling=cfg.init_sampling,
                          features=init_features(cfg, train, data, device))


def ceiling_set(cfg: Config, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The set an ``init: full`` run (the full-data ceiling) trains on, rebuilt from the data as
    ``run`` builds it: every training shape outside the validation hold-out, thinned to the
    config's ``points`` (``init_sampling``). A ceiling stores no set of its own."""
    if cfg.init != "full":
        raise UserError(f"only a full-data ceiling (init: full) is rebuilt from the data; this run has init {cfg.init!r}")
    train, _ = split_train(data, cfg.val_size)
    points, labels, _ = initial_set(cfg, train, data, torch.device("cpu"))
    return points.numpy(), labels.numpy()


def eval_seed(cfg: Config) -> int:
    return stream(cfg.seed, "eval") % 2**31


def first_stage_spec(cfg: Config, device: torch.device) -> dict:
    """What the points before trajectory matching depend on, besides the data and the code:
    settings but tm_* and eval_*, device."""
    values = {k: v for k, v in cfg.model_dump().items() if not k.startswith(("tm_", "eval_"))}
    return values | {"device": device.type}


def check_data(cfg: Config, data: Dataset) -> None:
    if data.name != cfg.dataset or data.options != dataset_options(cfg):
        raise ValueError(f"data is {data.name} {data.options}, config wants {cfg.dataset} {dataset_options(cfg)}")


def run(config: Config, report: Report | None = None, data: Dataset | None = None,
        data_dir: str | None = None) -> RunResult:
    """One distillation and evaluation. ``report(row)`` is called as it goes: distillation rows
    (``iteration``, ``loss``, ...), intermediate evaluations (``acc_mean``) and evaluation
    progress (``eval_done`` of ``eval_total`` models).

    Pass ``data`` to reuse a loaded dataset (it must match the config's dataset options); the
    same config and seed give the same points and accuracies on one CPU, and on any x86-64 CPU
    under ``TUNE_DISTILL_PORTABLE=1`` (``core.portable``).
    """
    with portable.arithmetic():
        return _run(config, report, data, data_dir)


def _run(config: Config, report: Report | None, data: Dataset | None, data_dir: str | None) -> RunResult:
    cfg = config
    started = time.perf_counter()
    if data is None:
        data = load_data(cfg, data_dir)
    check_data(cfg, data)
    device = resolve_device(cfg.device)
    train, val = split_train(data, cfg.val_size)
    evaluator = make_evaluator(cfg, data, val, device)
    evaluations: list[dict] = []
    eval_time = 0.0

    def eval_progress(done: int, total: int) -> None:
        if report is not None:
            report({"eval_done": done, "eval_total": total})

    def evaluate(points: torch.Tensor, labels: torch.Tensor, mix: torch.Tensor | None) -> dict[str, list[float]]:
        """Scores of the clouds the set trains on: ``points``, then their blends under ``mix``."""
        nonlocal eval_time
        t = time.perf_counter()
        scores = evaluator(*expanded(points, labels, mix), eval_seed(cfg), eval_progress)
        eval_time += time.perf_counter() - t
        return scores

    # real_match compares synthetic clouds with real ones of their size, thinned the same way; both
    # stages match against them, so they are thinned once (a selection needs none).
    matched = matched_clouds(cfg, train) if cfg.total_iterations else train

    def first_stage() -> dict:
        """The initial set, distilled by the matching objective against the clouds it matches."""
        syn, labels, picks = initial_set(cfg, train, data, device)
        syn, mix = syn.to(device), None
        if cfg.morphs:
            # Blends need corresponding points across an ipc cloud's anchors; the logits start at
            # random, as 3DDP's do.
            syn, picks = aligned(syn, cfg.cloud_split), None
            mix_gen = torch.Generator().manual_seed(stream(cfg.seed, "mix"))
            mix = torch.randn(data.num_classes * cfg.ipc * cfg.morphs, cfg.cloud_split, generator=mix_gen).to(device)

        def evaluate_at(it: int, points: torch.Tensor) -> None:
            scores = evaluate(points, labels, None if mix is None else mix.detach())
            accs = scores.pop(cfg.eval_split)
            row = {"iteration": it, "acc_mean": float(np.mean(accs)), "acc_std": float(np.std(accs)), "accuracies": accs}
            # The other splits the same models scored (validation beside test): what to choose an
            # iteration count on without looking at test.
            row |= {f"{name}_acc_mean": float(np.mean(a)) for name, a in scores.items()}
            evaluations.append(row)
            if report is not None:
                report(dict(row))

        history = distill(distill_settings(cfg), settings(NetSettings, cfg), matched, data.num_classes, data.domain,
                          syn, device, report, evaluate_at, mix)
        return {"points": syn.detach().cpu(), "labels": labels, "history": history, "picks": picks,
                "mix": None if mix is None else mix.detach().cpu()}

    if cfg.tm_iterations and not cfg.eval_at:
        # A trajectory-matching search varies only the tm_* settings: every trial of a seed
        # starts from the same first stage, so it is computed once (see core/cache.py).
        stage = cached(cache_path("stages", first_stage_spec(cfg, device), train, STAGE_CODE), first_stage)
    else:
        stage = first_stage()
    syn, labels, history, mix = stage["points"].to(device), stage["labels"], stage["history"], stage["mix"]
    # A selection (nothing distilled, so never a cached stage): which training clouds it picked.
    picks = None if cfg.total_iterations or stage["picks"] is None else train_indices(data, cfg.val_size)[stage["picks"]]
    if cfg.tm_iterations:
        data_id = {"dataset": data.name, **data.options, "val_size": cfg.val_size}
        history += match_trajectories(trajectory_settings(cfg), matched, data.num_classes, data.domain, syn, labels,
                                      device, report, data_id)
    distill_seconds = time.perf_counter() - started - eval_time
    scores = evaluate(syn, labels, None if mix is None else mix.to(device))
    accuracies = scores.pop(cfg.eval_split)
    return RunResult(
        config=cfg,
        points=syn.detach().cpu().numpy().astype(np.float32),
        labels=labels.numpy().astype(np.int64),
        history=history,
        accuracies=accuracies,
        split=cfg.eval_split,
        domain=data.domain,
        class_names=data.class_names,
        other_accuracies=scores,
        evaluations=evaluations,
        picks=None if picks is None else picks.numpy(),
        mix=None if mix is None else mix.numpy().astype(np.float32),
        seconds=time.perf_counter() - started,
        distill_seconds=distill_seconds,
        eval_seconds=eval_time,
    )
