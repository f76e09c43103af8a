"""Seconds per 3D distillation iteration and per 3D evaluation (ModelNet10, PointNet), as JSON.

Iterations: the ``modelnet10`` preset's distribution matching (and the same with gradient
matching, and with the voxel families on a 32^3 grid), the median over ``--iterations``
iterations after one warm-up. Evaluation: one PointNet trained from scratch on 1 and 10 real
clouds per class and scored on every test and validation shape, under the table protocol
(tables/modelnet10.yaml: 300 epochs in batches of 8 at IPC 1, 60 in batches of 16 at IPC 10).

    python benchmarks/bench_3d.py --data-dir ../shared/data/modelnet10_pcd1024 [--threads 1] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning OpenMP threads distort timings under load
import torch

from tune_distill import make_config
from tune_distill.core.seeding import stream
from tune_distill.evaluate import EvalSettings, build_evaluator
from tune_distill.methods.loop import distill
from tune_distill.methods.synthetic import init_synthetic
from tune_distill.nets import NetSettings
from tune_distill.recipe.run import distill_settings, load_data, settings, split_train

VARIANTS = {
    "pointnet-dm (modelnet10 preset)": {},
    "pointnet-gm": {"matching": "gradient", "distance": "sum_of_squares"},
    "dense-splat-gm (32^3)": {"family": "dense", "encoding": "splat", "norm": "instance", "matching": "gradient",
                              "width": 32, "depth": 3},
    "sparse-features-gm (32^3)": {"family": "sparse", "encoding": "features", "norm": "instance",
                                  "matching": "gradient", "width": 32, "depth": 3},
}


def seconds_per_iteration(data, train, overrides: dict, iterations: int, device: torch.device) -> float:
    cfg = make_config(dict(overrides, iterations=iterations + 1, log_every=1), preset="modelnet10")
    gen = torch.Generator().manual_seed(stream(cfg.seed, "init"))
    syn, _, _ = init_synthetic(cfg.init, train, data.num_classes, data.domain, cfg.ipc, cfg.points, gen)
    history = distill(distill_settings(cfg), settings(NetSettings, cfg), train, data.num_classes, data.domain,
                      syn.to(device), device)
    return statistics.median(row["sec_per_iter"] for row in history[1:])


def seconds_per_evaluation(data, train, val, ipc: int, epochs: int, batch: int, device: torch.device) -> float:
    evaluator = build_evaluator("point", data.domain, data.num_classes, {"test": data.test, "val": val},
                                EvalSettings(1, epochs, 32, 4, 0.001, batch, True), device)
    syn, labels, _ = init_synthetic("real", train, data.num_classes, data.domain, ipc, 1024, torch.Generator().manual_seed(0))
    start = time.perf_counter()
    evaluator(syn, labels, seed=0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = make_config(preset="modelnet10")
    data = load_data(cfg, args.data_dir)
    train, val = split_train(data, cfg.val_size)
    out = {"cpu": platform.processor() or platform.machine(), "threads": args.threads, "device": device.type,
           "torch": torch.__version__, "sec_per_iteration": {}, "sec_per_evaluation_model": {}}
    for name, overrides in VARIANTS.items():
        out["sec_per_iteration"][name] = round(seconds_per_iteration(data, train, overrides, args.iterations, device), 3)
    for ipc, epochs, batch in ((1, 300, 8), (10, 60, 16)):
        key = f"ipc {ipc} ({epochs} epochs, batch {batch}, 908 test + 400 val shapes)"
        out["sec_per_evaluation_model"][key] = round(seconds_per_evaluation(data, train, val, ipc, epochs, batch, device), 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
