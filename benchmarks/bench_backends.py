"""Speed race: our sparse engine (backend=torch) against MinkowskiEngine, printed as JSON.

At two sizes -- ``quick`` (the quick preset's sizes with family=sparse, encoding=features,
second_order=truncated) and ``paper-sparse`` -- it times, on real MNIST:
- ``forward_backward``: encode a real batch, network forward, weight gradients;
- ``iteration``: one whole distillation iteration (gradient matching over all 10 classes).
Both backends run in this one process, interleaved (the order alternates every repeat), with the
same weights, the same batches and the same thread count; each number is the median of the
repeats, and ``ratio`` is torch / minkowski (below 1: our engine is faster). ``*_cpu_s`` and
``ratio_cpu`` use the process's CPU time instead of wall time: on a shared machine, with one
thread, that is the work done, without the time spent waiting for a core.

    python benchmarks/bench_backends.py [--repeats 7] [--threads 2] [--sizes quick paper-sparse]
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", nargs="+", default=["quick", "paper-sparse"])
    parser.add_argument("--backends", nargs="+", default=["torch", "minkowski"])
    parser.add_argument("--device", default="cpu", help="our engine's device (MinkowskiEngine runs where it was built)")
    parser.add_argument("--data-dir", default=None,
                        help="MNIST folder (default: ../shared/data/mnist beside the repo if present, else the loader's search)")
    return parser.parse_args()


ARGS = parse_args()
# Before torch loads: OpenBLAS (MinkowskiEngine's GEMM) sizes its thread pool from the environment,
# and OpenMP's waiting threads spin by default, which on a machine whose cores are shared with
# other jobs makes every parallel region wait for a descheduled thread (both engines 10-40x
# slower with 2 threads here). Passive waiting is the setting for shared machines.
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(ARGS.threads))
os.environ.setdefault("OMP_NUM_THREADS", str(ARGS.threads))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tune_distill.recipe.config import make_config  # noqa: E402
from tune_distill.data import load_dataset  # noqa: E402
from tune_distill.methods.loop import distill  # noqa: E402
from tune_distill.nets import NetSettings  # noqa: E402
from tune_distill.recipe.run import distill_settings, encoding_of, settings  # noqa: E402
from tune_distill.nets import build_distill_net  # noqa: E402
from tune_distill.methods.synthetic import init_synthetic  # noqa: E402

SIZES = {
    # init/augment/snap pinned to the workload docs/minkowski.md measured, whatever the quick preset becomes
    "quick": ("quick", dict(family="sparse", encoding="features", second_order="truncated", iterations=1,
                            init="real", augment=False, snap_final=False)),
    "paper-sparse": ("paper-sparse", dict(iterations=1)),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def workloads(size: str, backend: str, data, device: torch.device):
    """(forward_backward, iteration) closures for one size and backend; same inputs for any backend."""
    preset, overrides = SIZES[size]
    cfg = make_config({**overrides, "backend": backend}, preset)
    grid, classes = data.domain.grid_shape, data.num_classes
    enc = encoding_of(cfg)
    net = build_distill_net(settings(NetSettings, cfg), enc.in_channels(len(grid)), grid, classes, seed=0).to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    pick = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[: cfg.batch_real]
    batch = data.train.batch(pick, cfg.real_cap).to(device)
    labels = data.train.labels[pick].to(device)
    syn, _, _ = init_synthetic(cfg.init, data.train, classes, data.domain, cfg.ipc, cfg.points,
                            torch.Generator().manual_seed(0), cfg.init_noise, cfg.real_cap)

    def forward_backward():
        loss = F.cross_entropy(net(enc(batch, grid, True)), labels)
        torch.autograd.grad(loss, params)

    def iteration():
        distill(distill_settings(cfg), settings(NetSettings, cfg), data.train, classes, data.domain, syn.clone().to(device),
                device)

    return {"forward_backward": forward_backward, "iteration": iteration}


def measure(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process: every thread, but not time spent waiting for a core)."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    torch.set_num_threads(ARGS.threads)
    device = torch.device(ARGS.device)
    beside = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    data = load_dataset("mnist", ARGS.data_dir or (beside if beside.exists() else None))
    backends = list(ARGS.backends)
    result: dict = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "omp_wait_policy": os.environ["OMP_WAIT_POLICY"], "load_average": os.getloadavg()[0],
                    "repeats": ARGS.repeats, "sizes": {}}
    if "minkowski" in backends:
        from tune_distill.sparse import minkowski

        error = minkowski.import_error()
        if error is not None:
            result["minkowski_error"] = error
            backends.remove("minkowski")
    for size in ARGS.sizes:
        runs = {b: workloads(size, b, data, device if b == "torch" else torch.device("cpu")) for b in backends}
        out = {}
        for task in ("forward_backward", "iteration"):
            times: dict[str, list[tuple[float, float]]] = {b: [] for b in backends}
            for b in backends:  # warm-up: first-call allocations, lazy imports
                runs[b][task]()
            for r in range(ARGS.repeats):
                for b in backends if r % 2 == 0 else reversed(backends):
                    times[b].append(measure(runs[b][task], device if b == "torch" else torch.device("cpu")))
            row = {}
            for b, t in times.items():
                row[f"{b}_s"] = round(statistics.median(w for w, _ in t), 4)
                row[f"{b}_cpu_s"] = round(statistics.median(c for _, c in t), 4)
            if len(backends) == 2:
                row["ratio"] = round(row["torch_s"] / row["minkowski_s"], 3)
                row["ratio_cpu"] = round(row["torch_cpu_s"] / row["minkowski_cpu_s"], 3)
            out[task] = row
            print(f"{size} {task}: {row}", file=sys.stderr, flush=True)
        result["sizes"][size] = out
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
