"""FLOPs and seconds per cell of a named evaluation protocol (``eval_protocol``) and network
(``eval_net``): the K models one by one vs trained as one stack (``eval_batched``), against the
bound this machine's matmul peak puts on them.

Prints one JSON object:
- ``matmul_peak_gflops``: measured here, a float32 (2048 x 2048) @ (2048 x 2048) product on
  ``--threads`` threads, best of 5;
- ``tflop_per_cell``: the matrix-product FLOPs (``torch.utils.flop_counter``) of one training step
  (forward and backward, a batch of ``eval_batch`` clouds of the cell's size) times the steps of
  the protocol's epochs and K models, plus one forward pass over every scored test (and
  validation) shape per model; elementwise work (norms, activations, the optimizer) is not
  counted, so the bound is a lower one;
- per path, ``seconds`` for the whole cell (training run for ``--epochs`` epochs and scaled to the
  protocol's, the test pass on ``--test-size`` shapes scaled to all) and ``ratio_to_bound``:
  seconds / (FLOPs / peak).

    python benchmarks/bench_protocol.py [CELL] --protocol sadm --net pointnet --epochs 2 --models 2 \\
        --test-size 64 --threads 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning OpenMP threads distort timings under load
import torch
from torch.utils.flop_counter import FlopCounterMode

from tune_distill import make_config
from tune_distill.recipe.config import load_config_file, with_protocol
from tune_distill.data import load_dataset
from tune_distill.evaluate.point import NET_EVAL_BATCH, build_net, train_batched, train_one
from tune_distill.evaluate.settings import accuracy
from tune_distill.recipe.artifacts import load_synthetic
from tune_distill.recipe.run import eval_settings, evaluation_splits, split_train

REPO = Path(__file__).resolve().parents[1]
CELL = REPO / "distilled/modelnet10/herding-fps-16x64/ipc1/seed0"
SEED = 0


def matmul_peak(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of the best of ``repeats`` float32 n x n products on ``threads`` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def counted(fn: Callable[[], object]) -> int:
    """The matrix-product FLOPs ``fn()`` runs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cell", nargs="?", default=str(CELL), help="a run folder (default: the 16 x 64 ModelNet10 cell)")
    parser.add_argument("--protocol", choices=["table", "full", "sadm"], default="sadm")
    parser.add_argument("--net", choices=["pointnet", "dgcnn", "pointnet2"], default="pointnet")
    parser.add_argument("--epochs", type=int, default=2, help="epochs run per path; scaled to the protocol's")
    parser.add_argument("--models", type=int, default=None, help="K (default: the protocol's)")
    parser.add_argument("--test-size", type=int, default=64, help="test shapes scored per path; scaled to all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None, help="default: ../shared/data/<dataset>_pcd1024")
    args = parser.parse_args()

    cell = Path(args.cell)
    values = with_protocol(load_config_file(cell / "config.yaml"), args.protocol) | {"eval_net": args.net}
    if args.models:
        values["eval_models"] = args.models
    config = make_config(values)
    settings = eval_settings(config)
    peak = matmul_peak(args.threads)
    data = load_dataset(config.dataset, args.data_dir or REPO.parent / "shared" / "data" / f"{config.dataset}_pcd1024")
    points, labels = load_synthetic(cell, data=data)
    train_x, train_y = torch.from_numpy(points), torch.from_numpy(labels)
    _, val = split_train(data, config.val_size)
    scored = sum(len(c) for c in evaluation_splits(config, data, val).values())
    test = data.test.batch(torch.arange(args.test_size)).padded(), data.test.labels[: args.test_size]

    # FLOPs: one step of one model, one forward over a test batch.
    net = build_net(3, data.num_classes, settings)
    batch = train_x[: settings.batch]
    step = counted(lambda: torch.nn.functional.cross_entropy(net(batch), train_y[: settings.batch]).backward())
    net.eval()
    with torch.no_grad():
        forward = counted(lambda: net(test[0][:8])) / 8
    steps = sum(1 for start in range(0, len(train_x), settings.batch) if len(train_x) - start >= 2)
    flops = settings.models * (steps * settings.epochs * step + scored * forward)
    bound = flops / (peak * 1e9)

    torch.set_num_threads(args.threads)
    run = replace(settings, epochs=args.epochs)
    train_scale, test_scale = settings.epochs / args.epochs, scored / args.test_size
    eval_batch = NET_EVAL_BATCH[settings.net]
    seeds = [SEED + k for k in range(settings.models)]
    paths = {}
    for name in ("one_by_one", "stacked"):
        start = time.perf_counter()
        if name == "one_by_one":
            nets = [train_one(train_x, train_y, data.num_classes, run, s) for s in seeds]
            trained = time.perf_counter()
            accs = [accuracy(n, *test, eval_batch) for n in nets]
        else:
            stack = train_batched(train_x, train_y, data.num_classes, run, seeds)
            trained = time.perf_counter()
            accs = stack.accuracies(*test, eval_batch)
        done = time.perf_counter()
        seconds = (trained - start) * train_scale + (done - trained) * test_scale
        paths[name] = {"seconds": round(seconds, 1), "train_s_run": round(trained - start, 2),
                       "test_s_run": round(done - trained, 2), "ratio_to_bound": round(seconds / bound, 2)}
    print(json.dumps({
        "cell": str(cell.relative_to(REPO) if cell.is_relative_to(REPO) else cell), "protocol": args.protocol,
        "net": args.net, "models": settings.models, "epochs_protocol": settings.epochs, "epochs_run": args.epochs,
        "clouds": len(train_x), "points_per_cloud": train_x.shape[1], "steps_per_epoch": steps, "scored_shapes": scored,
        "test_size_run": args.test_size, "threads": args.threads, "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(), "matmul_peak_gflops": round(peak, 1),
        "gflop_per_train_step": round(step / 1e9, 3), "gflop_per_test_shape": round(forward / 1e9, 4),
        "tflop_per_cell": round(flops / 1e12, 2), "bound_seconds": round(bound, 1), **paths,
        "stacked_over_one_by_one": round(paths["stacked"]["seconds"] / paths["one_by_one"]["seconds"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
