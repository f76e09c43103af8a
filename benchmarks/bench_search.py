"""The search system's overhead and parallel speed-up, on this machine.

Runs the same N small trials (a grid over ``lr``, one seed each, a reduced quick config) three
ways and prints JSON:

- ``serial_s``: N ``run()`` calls in this process, one torch thread (no Ray at all);
- ``tune_1_s``: the grid through Ray Tune + the trainable, one trial at a time on 1 CPU;
- ``tune_2_s``: the same with 2 concurrent trials on 1 CPU each.

``overhead_per_trial_s`` = (tune_1 - serial) / N: what Ray Tune, checkpoints and the trainable cost
per trial; ``speedup_2_concurrent`` = tune_1 / tune_2. The Ray cluster's start-up is reported
apart (``ray_start_s``); it is paid once per search.

    python benchmarks/bench_search.py --data-dir ../shared/data/mnist [--trials 6]

``--gpu-shares 1 2 4 8`` measures a GPU instead: for each S, 8 full ``quick`` trials (one seed
each) through Ray Tune with S trials sharing the one GPU (``--gpus-per-trial 1/S``, device
cuda), and prints trials per hour for each S and its throughput over S = 1:

    python benchmarks/bench_search.py --data-dir ../shared/data/mnist --gpu-shares 1 2 4 8
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from tune_distill import make_config, run
from tune_distill.data import load_dataset
from tune_distill.tune.space import space_from_dict
from tune_distill.tune.tuner import search

BASE = {"iterations": 30, "batch_real": 16, "eval_models": 1, "eval_epochs": 100, "eval_test_size": 1000,
        "val_size": 5000, "eval_split": "val"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--gpu-shares", type=int, nargs="+", help="trials sharing one GPU, e.g. 1 2 4 8")
    args = parser.parse_args()
    if args.gpu_shares:
        gpu_throughput(args.data_dir, args.gpu_shares)
        return
    lrs = [round(0.02 * (k + 1), 3) for k in range(args.trials)]

    def space(concurrency: int):
        return space_from_dict({
            "base": {"preset": "quick", "set": BASE},
            "params": {"lr": {"choice": lrs}},
            "search": {"algorithm": "grid", "seeds": 1, "resources": {"cpus": 1}, "concurrency": concurrency},
        })

    data = load_dataset("mnist", args.data_dir)
    torch.set_num_threads(1)
    start = time.perf_counter()
    for lr in lrs:
        run(make_config({**BASE, "lr": lr}, preset="quick"), data=data)
    serial = time.perf_counter() - start

    import ray

    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - start
    times = {}
    with tempfile.TemporaryDirectory() as storage:
        for concurrency in (1, 2):
            outcome = search(space(concurrency), name=f"overhead-{concurrency}", storage=storage,
                             data_dir=args.data_dir, progress=False)
            times[concurrency] = outcome.seconds
    ray.shutdown()
    print(json.dumps({
        "trials": args.trials, "config": {**BASE, "preset": "quick"},
        "serial_s": round(serial, 1), "tune_1_s": round(times[1], 1), "tune_2_s": round(times[2], 1),
        "ray_start_s": round(ray_start, 1),
        "overhead_per_trial_s": round((times[1] - serial) / args.trials, 2),
        "speedup_2_concurrent": round(times[1] / times[2], 2),
        "speedup_2_concurrent_vs_serial": round(serial / times[2], 2),
    }, indent=2))


def gpu_throughput(data_dir: str | None, shares: list[int], trials: int = 8) -> None:
    """Trials per hour of full ``quick`` trials with S of them sharing one GPU, for each S."""
    if not torch.cuda.is_available():
        raise SystemExit("bench_search.py --gpu-shares: no CUDA device is visible; run it on a GPU machine")
    import ray

    lrs = [round(0.05 + 0.01 * k, 3) for k in range(trials)]
    ray.init(num_cpus=max(shares), num_gpus=1, include_dashboard=False, log_to_driver=False)
    rows = {}
    with tempfile.TemporaryDirectory() as storage:
        for share in shares:
            space = space_from_dict({
                "base": {"preset": "quick", "set": {"device": "cuda"}},
                "params": {"lr": {"choice": lrs}},
                "search": {"algorithm": "grid", "seeds": 1, "resources": {"cpus": 1, "gpus": 1 / share},
                           "concurrency": share},
            })
            outcome = search(space, name=f"gpu-{share}", storage=storage, data_dir=data_dir, progress=False)
            rows[share] = {"seconds": round(outcome.seconds, 1), "finished": outcome.finished,
                           "trials_per_hour": round(3600 * outcome.finished / outcome.seconds, 1)}
    ray.shutdown()
    one = rows[shares[0]]["trials_per_hour"]
    for row in rows.values():
        row["throughput_over_first"] = round(row["trials_per_hour"] / one, 2)
    print(json.dumps({"device": torch.cuda.get_device_name(0), "trials": trials, "preset": "quick",
                      "by_trials_per_gpu": rows}, indent=2))


if __name__ == "__main__":
    main()
