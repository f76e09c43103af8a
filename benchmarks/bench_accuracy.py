"""Accuracy of a configuration end to end: distil + evaluate over several seeds, print JSON.

By default it runs ``configs/ours.yaml`` (our best MNIST method at 1 cloud per class, the paper's
full evaluation protocol) for seeds 0-4 and prints every seed's test (and validation) accuracy,
their mean and std, and the seconds spent. At full size it takes about 5 minutes per seed on 2
CPU cores; it is not part of CI. The config's ``dataset`` picks the data (``--data-dir`` its
folder), so a ModelNet config runs the same way:

    python benchmarks/bench_accuracy.py --data-dir ../shared/data/mnist [--config FILE] [--seeds 0 1 2 3 4]
                                        [--set key=value ...]
    python benchmarks/bench_accuracy.py --config configs/modelnet10-herding-fps.yaml --data-dir ../shared/data/modelnet10_pcd1024
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning OpenMP threads distort timings under load
import numpy as np

from tune_distill import make_config, run
from tune_distill.recipe.config import file_preset, load_config_file, parse_assignments
from tune_distill.data import load_dataset

OURS = Path(__file__).resolve().parents[1] / "configs" / "ours.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--config", default=str(OURS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    values = load_config_file(args.config)
    preset = file_preset(values, None, f"--config {args.config}")
    values.update(parse_assignments(args.set))
    data = load_dataset(make_config(values, preset=preset).dataset, args.data_dir)
    seeds = []
    for seed in args.seeds:
        start = time.perf_counter()
        result = run(make_config({**values, "seed": seed}, preset=preset), data=data)
        metrics = result.metrics()
        seeds.append({"seed": seed, "test": round(100 * result.acc_mean, 2),
                      "val": round(100 * metrics["val_acc_mean"], 2) if "val_acc_mean" in metrics else None,
                      "seconds": round(time.perf_counter() - start, 1)})
        print(json.dumps(seeds[-1]), flush=True)
    test = [s["test"] for s in seeds]
    print(json.dumps({"config": args.config, "overrides": args.set, "seeds": seeds,
                      "test_mean": round(float(np.mean(test)), 2), "test_std": round(float(np.std(test)), 2),
                      "seconds_total": round(sum(s["seconds"] for s in seeds), 1)}, indent=2))


if __name__ == "__main__":
    main()
