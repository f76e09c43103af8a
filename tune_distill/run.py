"""The recipe: one distillation plus its evaluation, from a validated ``Config``. No Ray here.

``run(config, report)`` loads (or takes) the dataset, carves out the validation split, builds
the initial synthetic set, distils it (then refines it by trajectory matching when
``tm_iterations`` > 0, the first stage then coming from the disk cache when an earlier run of
the same seed and settings computed it), evaluates it and returns a ``RunResult``. With
``iterations=0`` it evaluates the initial set itself, which is how the baselines (random real
clouds, herding, class-mean top-k) are measured by the very same evaluator.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .cache import cache_path, cached
from .config import Config
from .data import Dataset, load_dataset
from .data.base import Clouds, PointBatch
from .distill import Report, distill, stream
from .evaluate import EvalSettings, evaluate_images, render
from .synthetic import init_synthetic
from .trajectory import match_trajectories

VAL_SPLIT_SEED = 20240531  # fixed, so every run and trial holds out the same digits


@dataclass
class RunResult:
    """What one run produced: the synthetic set, its history and its evaluation."""

    config: Config
    points: np.ndarray  # (N, P, D) float32, grid coordinates (depth, height, width for MNIST)
    labels: np.ndarray  # (N,) int64
    history: list[dict]
    accuracies: list[float]
    split: str  # the set the accuracies were measured on: test | val
    grid_shape: tuple[int, ...]
    # The same trained ConvNets scored on other splits: "val" when the primary split is test and
    # val_size > 0 (the test set is never scored when selecting on val).
    other_accuracies: dict[str, list[float]] = field(default_factory=dict)
    evaluations: list[dict] = field(default_factory=list)  # intermediate (eval_at) evaluations
    seconds: float = 0.0
    distill_seconds: float = 0.0
    eval_seconds: float = 0.0

    @property
    def acc_mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def acc_std(self) -> float:
        return float(np.std(self.accuracies))

    def metrics(self) -> dict:
        """The summary written to ``metrics.json`` and reported to Tune."""
        out = {
            "acc_mean": self.acc_mean, "acc_std": self.acc_std, "accuracies": list(self.accuracies),
            "split": self.split, "seconds": self.seconds, "distill_seconds": self.distill_seconds,
            "eval_seconds": self.eval_seconds, "evaluations": self.evaluations,
        }
        for name, accs in self.other_accuracies.items():
            out[f"{name}_acc_mean"] = float(np.mean(accs))
            out[f"{name}_accuracies"] = list(accs)
        return out


def split_train(train: Clouds, val_size: int) -> tuple[Clouds, Clouds | None]:
    """(clouds the distillation may use, validation clouds): a fixed random hold-out."""
    if val_size == 0:
        return train, None
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    return train.subset(perm[val_size:].sort().values), train.subset(perm[:val_size].sort().values)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from .errors import UserError

        raise UserError("device=cuda but no CUDA device is visible; use device=cpu or device=auto")
    return torch.device(name)


def evaluation_sets(cfg: Config, data: Dataset, val: Clouds | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Images and labels the synthetic set is judged on, primary split first.

    Selecting on val scores validation digits only; a test evaluation also scores the
    validation digits when there are any (free: the same trained networks).
    """
    names = ["val"] if cfg.eval_split == "val" else ["test"] + (["val"] if val is not None else [])
    sets = {}
    for name in names:
        clouds = val if name == "val" else data.test
        n = len(clouds) if cfg.eval_test_size is None else min(cfg.eval_test_size, len(clouds))
        sets[name] = (render(clouds.batch(torch.arange(n)), data.grid_shape), clouds.labels[:n])
    return sets


def eval_settings(cfg: Config) -> EvalSettings:
    return EvalSettings(cfg.eval_models, cfg.eval_epochs, cfg.eval_width, cfg.eval_depth, cfg.eval_lr,
                        cfg.eval_batch, cfg.eval_augment)


def evaluate_points(cfg: Config, points: torch.Tensor, labels: torch.Tensor, data: Dataset,
                    eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> dict[str, list[float]]:
    """Accuracies, per evaluation set, of ConvNets trained from scratch on the rendered synthetic set."""
    images = render(PointBatch.from_padded(points.detach().cpu()), data.grid_shape)
    on_device = {name: (x.to(device), y.to(device)) for name, (x, y) in eval_sets.items()}
    return evaluate_images(images.to(device), labels.to(device), on_device, data.num_classes,
                           eval_settings(cfg), stream(cfg.seed, "eval") % 2**31)


def first_stage_spec(cfg: Config, device: torch.device) -> dict:
    """What the points before trajectory matching depend on, besides the data: settings but tm_* and eval_*, device."""
    settings = {k: v for k, v in cfg.model_dump().items() if not k.startswith(("tm_", "eval_"))}
    return settings | {"device": device.type}


def run(config: Config, report: Report | None = None, data: Dataset | None = None,
        data_dir: str | None = None) -> RunResult:
    """One distillation and evaluation. ``report(metrics)`` is called as it goes.

    Pass ``data`` to reuse a loaded dataset (it must match the config's dataset options); the
    same config and seed give the same points and accuracies on CPU.
    """
    cfg = config
    started = time.perf_counter()
    if data is None:
        data = load_dataset(cfg.dataset, data_dir, threshold=cfg.threshold)
    elif data.name != cfg.dataset or data.options.get("threshold") != cfg.threshold:
        raise ValueError(f"data is {data.name} {data.options}, config wants {cfg.dataset} threshold={cfg.threshold}")
    device = resolve_device(cfg.device)
    train, val = split_train(data.train, cfg.val_size)
    eval_sets = evaluation_sets(cfg, data, val)
    init_gen = torch.Generator().manual_seed(stream(cfg.seed, "init"))
    syn, labels = init_synthetic(cfg.init, train, data.num_classes, data.grid_shape, cfg.ipc, cfg.points,
                                 init_gen, cfg.init_noise, cfg.real_cap)
    syn = syn.to(device)
    evaluations: list[dict] = []
    eval_time = 0.0

    def evaluate_at(it: int, points: torch.Tensor) -> None:
        nonlocal eval_time
        t = time.perf_counter()
        accs = evaluate_points(cfg, points, labels, data, eval_sets, device)[cfg.eval_split]
        eval_time += time.perf_counter() - t
        row = {"iteration": it, "acc_mean": float(np.mean(accs)), "acc_std": float(np.std(accs)), "accuracies": accs}
        evaluations.append(row)
        if report is not None:
            report(dict(row))

    if cfg.tm_iterations and not cfg.eval_at:
        # A trajectory-matching search varies only the tm_* settings: every trial of a seed
        # starts from the same first stage, so it is computed once (see cache.py).
        def first_stage() -> dict:
            rows = distill(cfg, train, data.num_classes, data.grid_shape, syn, device, report)
            return {"points": syn.detach().cpu(), "history": rows}

        stage = cached(cache_path("stages", first_stage_spec(cfg, device), train), first_stage)
        with torch.no_grad():
            syn.copy_(stage["points"])
        history = stage["history"]
    else:
        history = distill(cfg, train, data.num_classes, data.grid_shape, syn, device, report, evaluate_at)
    if cfg.tm_iterations:
        history += match_trajectories(cfg, train, data.num_classes, data.grid_shape, syn, labels, device, report)
    distill_seconds = time.perf_counter() - started - eval_time
    t = time.perf_counter()
    scores = evaluate_points(cfg, syn, labels, data, eval_sets, device)
    accuracies = scores.pop(cfg.eval_split)
    eval_time += time.perf_counter() - t
    return RunResult(
        config=cfg,
        points=syn.detach().cpu().numpy().astype(np.float32),
        labels=labels.numpy().astype(np.int64),
        history=history,
        accuracies=accuracies,
        split=cfg.eval_split,
        grid_shape=data.grid_shape,
        other_accuracies=scores,
        evaluations=evaluations,
        seconds=time.perf_counter() - started,
        distill_seconds=distill_seconds,
        eval_seconds=eval_time,
    )
