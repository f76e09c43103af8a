"""Seconds per full-protocol evaluation, the K classifiers one by one vs batched (``eval_batched``).

Prints one JSON object. ``--dataset mnist`` (the image evaluator, the paper's protocol): 5
ConvNets (width 128, depth 3) trained from scratch for 1000 epochs on an MNIST IPC 1 and an IPC 10
set of real digits (``init_synthetic("real")``), then scored on all 10,000 test digits.
``--dataset modelnet10`` (the point evaluator, the ``modelnet10`` preset's protocol): 5 PointNets
(width 32, depth 4, Adam 1e-3, batches of 8) trained for 500 epochs on an IPC 1 and an IPC 10 set
of real shapes, then scored on all 908 test shapes.

With fewer ``--epochs`` (or ``--test-size``) the training (test) time is scaled linearly to the
protocol's size, as both are the same work repeated, and the JSON says ``"extrapolated": true``.
Each path is warmed up with a one-epoch run first, so one-time costs are not scaled up.

    python benchmarks/bench_eval.py --epochs 20 [--dataset mnist|modelnet10] [--test-size 2000]
                                    [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, TypeVar

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning OpenMP threads distort timings under load
import torch

from tune_distill.core.types import PointBatch
from tune_distill.data import load_dataset
from tune_distill.data.image import render
from tune_distill.evaluate import EvalSettings, image, point
from tune_distill.evaluate.settings import accuracy
from tune_distill.methods.synthetic import init_synthetic

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SEED = 0
T = TypeVar("T")


@dataclass(frozen=True)
class Protocol:
    folder: str
    settings: EvalSettings
    points: int  # points per synthetic cloud
    to_input: Callable  # (PointBatch, Domain) -> the evaluator's input tensor
    train_one: Callable
    train_batched: Callable
    eval_batch: int


PROTOCOLS = {
    "mnist": Protocol("mnist", EvalSettings(models=5, epochs=1000, width=128, depth=3, lr=0.01, batch=256, augment=True),
                      250, lambda b, domain: render(b, domain.grid_shape), image.train_one, image.train_batched, image.EVAL_BATCH),
    "modelnet10": Protocol("modelnet10_pcd1024", EvalSettings(models=5, epochs=500, width=32, depth=4, lr=0.001, batch=8,
                                                              augment=True),
                           1024, lambda b, domain: b.padded(), point.train_one, point.train_batched, point.EVAL_BATCH),
}


def timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """``fn()`` and its wall seconds, the device's queue drained at both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def one_by_one(proto: Protocol, train_x, train_y, test, classes: int, settings: EvalSettings, device):
    """Accuracies, training seconds and test seconds of the K models trained one after another."""
    accs, train_s, test_s = [], 0.0, 0.0
    for k in range(settings.models):
        net, s = timed(lambda: proto.train_one(train_x, train_y, classes, settings, SEED + k), device)
        acc, t = timed(lambda: accuracy(net, *test, proto.eval_batch), device)
        accs, train_s, test_s = accs + [acc], train_s + s, test_s + t
    return accs, train_s, test_s


def batched(proto: Protocol, train_x, train_y, test, classes: int, settings: EvalSettings, device):
    """Accuracies, training seconds and test seconds of the K models trained as one computation."""
    seeds = [SEED + k for k in range(settings.models)]
    stack, train_s = timed(lambda: proto.train_batched(train_x, train_y, classes, settings, seeds), device)
    scores, test_s = timed(lambda: stack.scores({"test": test}, proto.eval_batch), device)
    return [s["test"] for s in scores], train_s, test_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(PROTOCOLS), default="mnist")
    parser.add_argument("--data-dir", default=None, help="default: ../shared/data/<dataset folder>")
    parser.add_argument("--epochs", type=int, default=None, help="epochs to run; fewer are scaled to the protocol's")
    parser.add_argument("--test-size", type=int, default=None, help="test inputs to score; fewer are scaled to all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--models", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    proto = PROTOCOLS[args.dataset]
    data = load_dataset(args.dataset, args.data_dir or DATA / proto.folder)
    index = torch.arange(min(args.test_size or len(data.test), len(data.test)))
    test = (proto.to_input(data.test.batch(index), data.domain).to(device), data.test.labels[index].to(device))
    protocol_epochs = proto.settings.epochs
    settings = replace(proto.settings, models=args.models, epochs=args.epochs or protocol_epochs)
    train_scale, test_scale = protocol_epochs / settings.epochs, len(data.test) / len(index)
    out: dict = {"dataset": args.dataset,
                 "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
                 "threads": args.threads, "torch": torch.__version__, "models": args.models, "width": settings.width,
                 "depth": settings.depth, "epochs_run": settings.epochs, "epochs_protocol": protocol_epochs,
                 "test_size_run": len(index), "test_size_protocol": len(data.test),
                 "extrapolated": train_scale != 1 or test_scale != 1, "sec_per_evaluation": {}}
    for ipc in args.ipc:
        points, labels, _ = init_synthetic("real", data.train, data.num_classes, data.domain, ipc, proto.points,
                                        torch.Generator().manual_seed(SEED))
        train_x = proto.to_input(PointBatch.from_padded(points), data.domain).to(device)
        train_y = labels.to(device)
        row = {}
        for name, path in (("one_by_one", one_by_one), ("batched", batched)):
            path(proto, train_x, train_y, (test[0][:2], test[1][:2]), data.num_classes, replace(settings, epochs=1), device)
            accs, train_s, test_s = path(proto, train_x, train_y, test, data.num_classes, settings, device)
            row[name] = {"seconds": round(train_s * train_scale + test_s * test_scale, 2), "train_s_run": round(train_s, 2),
                         "test_s_run": round(test_s, 2), "accuracies": accs}
        row["ratio_batched_over_one_by_one"] = round(row["batched"]["seconds"] / row["one_by_one"]["seconds"], 3)
        row["same_accuracies"] = row["batched"]["accuracies"] == row["one_by_one"]["accuracies"]
        out["sec_per_evaluation"][f"ipc{ipc}"] = row
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
