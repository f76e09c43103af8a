"""Seconds per full-protocol image evaluation, the K ConvNets one by one vs batched (``eval_batched``).

Prints one JSON object. The protocol: 5 ConvNets (width 128, depth 3) trained from scratch for
``--epochs`` (1000 in the paper's protocol) on an MNIST IPC 1 and an IPC 10 set of real digits
(``init_synthetic("real")``), then scored on all 10,000 test digits. With fewer epochs (or
``--test-digits``) the training (test) time is scaled linearly to the protocol's size, as both
are the same work repeated, and the JSON says ``"extrapolated": true``. Each path is warmed up
with a one-epoch run first, so one-time costs are not scaled up.

    python benchmarks/bench_eval.py --epochs 20 [--test-digits 2000] [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, TypeVar

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning OpenMP threads distort timings under load
import torch

from tune_distill.core.types import PointBatch
from tune_distill.data import load_dataset
from tune_distill.data.image import render
from tune_distill.evaluate import EvalSettings
from tune_distill.evaluate.image import accuracy, score_batched, train_batched, train_one
from tune_distill.methods.synthetic import init_synthetic

PROTOCOL_EPOCHS = 1000
SEED = 0
T = TypeVar("T")


def timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """``fn()`` and its wall seconds, the device's queue drained at both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def one_by_one(train_x, train_y, test, classes: int, settings: EvalSettings, device) -> tuple[list[float], float, float]:
    """Accuracies, training seconds and test seconds of the K models trained one after another."""
    accs, train_s, test_s = [], 0.0, 0.0
    for k in range(settings.models):
        net, s = timed(lambda: train_one(train_x, train_y, classes, settings, SEED + k), device)
        acc, t = timed(lambda: accuracy(net, *test), device)
        accs, train_s, test_s = accs + [acc], train_s + s, test_s + t
    return accs, train_s, test_s


def batched(train_x, train_y, test, classes: int, settings: EvalSettings, device) -> tuple[list[float], float, float]:
    """Accuracies, training seconds and test seconds of the K models trained as one computation."""
    seeds = [SEED + k for k in range(settings.models)]
    (forward, params), train_s = timed(lambda: train_batched(train_x, train_y, classes, settings, seeds), device)
    scores, test_s = timed(lambda: score_batched(forward, params, {"test": test}), device)
    return [s["test"] for s in scores], train_s, test_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    parser.add_argument("--epochs", type=int, default=PROTOCOL_EPOCHS, help="epochs to run; fewer are scaled to 1000")
    parser.add_argument("--test-digits", type=int, default=10000, help="test digits to score; fewer are scaled to 10,000")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--models", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = load_dataset("mnist", args.data_dir)
    index = torch.arange(min(args.test_digits, len(data.test)))
    test = (render(data.test.batch(index), data.domain.grid_shape).to(device), data.test.labels[index].to(device))
    settings = EvalSettings(models=args.models, epochs=args.epochs, width=128, depth=3, lr=0.01, batch=256, augment=True)
    train_scale, test_scale = PROTOCOL_EPOCHS / args.epochs, len(data.test) / len(index)
    out: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
                 "threads": args.threads, "torch": torch.__version__, "models": args.models, "width": 128, "depth": 3,
                 "epochs_run": args.epochs, "epochs_protocol": PROTOCOL_EPOCHS, "test_digits_run": len(index),
                 "test_digits_protocol": len(data.test), "extrapolated": train_scale != 1 or test_scale != 1,
                 "sec_per_evaluation": {}}
    for ipc in args.ipc:
        points, labels = init_synthetic("real", data.train, data.num_classes, data.domain, ipc, 250,
                                        torch.Generator().manual_seed(SEED))
        train_x = render(PointBatch.from_padded(points), data.domain.grid_shape).to(device)
        train_y = labels.to(device)
        row = {}
        for name, path in (("one_by_one", one_by_one), ("batched", batched)):
            path(train_x, train_y, (test[0][:1], test[1][:1]), data.num_classes, replace(settings, epochs=1), device)
            accs, train_s, test_s = path(train_x, train_y, test, data.num_classes, settings, device)
            row[name] = {"seconds": round(train_s * train_scale + test_s * test_scale, 2), "train_s_run": round(train_s, 2),
                         "test_s_run": round(test_s, 2), "accuracies": accs}
        row["ratio_batched_over_one_by_one"] = round(row["batched"]["seconds"] / row["one_by_one"]["seconds"], 3)
        row["same_accuracies"] = row["batched"]["accuracies"] == row["one_by_one"]["accuracies"]
        out["sec_per_evaluation"][f"ipc{ipc}"] = row
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
