"""Seconds per distillation iteration (both families, quick and paper sizes) and per evaluation.

Prints one JSON object. Each iteration time is the median over ``--iterations`` iterations
after one warm-up iteration; evaluation times are one ConvNet trained from scratch (and tested)
under the quick and the paper protocols.

    python benchmarks/bench_engine.py --data-dir ../shared/data/mnist [--threads 2] [--skip-paper-eval]
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
from tune_distill.data import load_dataset
from tune_distill.core.seeding import stream
from tune_distill.data.image import render
from tune_distill.evaluate import EvalSettings
from tune_distill.evaluate.image import evaluate_images
from tune_distill.methods.loop import distill
from tune_distill.nets import NetSettings
from tune_distill.recipe.run import distill_settings, settings
from tune_distill.core.types import PointBatch
from tune_distill.methods.synthetic import init_synthetic

SIZES = {
    "quick-dense": ("quick", {}),
    "quick-sparse": ("quick", {"family": "sparse", "encoding": "features", "second_order": "truncated"}),
    "paper-sparse": ("paper-sparse", {}),
    "paper-dense": ("paper-dense", {}),
}


def seconds_per_iteration(data, preset: str, overrides: dict, iterations: int) -> float:
    cfg = make_config(dict(overrides, iterations=iterations + 1, log_every=1), preset=preset)
    gen = torch.Generator().manual_seed(stream(cfg.seed, "init"))
    syn, _, _ = init_synthetic(cfg.init, data.train, data.num_classes, data.domain, cfg.ipc, cfg.points, gen)
    history = distill(distill_settings(cfg), settings(NetSettings, cfg), data.train, data.num_classes, data.domain, syn,
                      torch.device("cpu"))
    return statistics.median(row["sec_per_iter"] for row in history[1:])


def seconds_per_evaluation(data, preset: str) -> float:
    cfg = make_config({}, preset=preset)
    test_n = cfg.eval_test_size or len(data.test)
    test_x = render(data.test.batch(torch.arange(test_n)), data.domain.grid_shape)
    test_y = data.test.labels[:test_n]
    gen = torch.Generator().manual_seed(0)
    syn, labels, _ = init_synthetic("real", data.train, data.num_classes, data.domain, 1, cfg.points, gen)
    images = render(PointBatch.from_padded(syn), data.domain.grid_shape)
    settings = EvalSettings(1, cfg.eval_epochs, cfg.eval_width, cfg.eval_depth, cfg.eval_lr, cfg.eval_batch, cfg.eval_augment)
    start = time.perf_counter()
    evaluate_images(images, labels, {"test": (test_x, test_y)}, data.num_classes, settings, seed=0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--skip-paper-eval", action="store_true", help="skip the 1000-epoch evaluation (minutes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist", args.data_dir)
    out = {"cpu": platform.processor() or platform.machine(), "threads": args.threads, "torch": torch.__version__,
           "sec_per_iteration": {}, "sec_per_evaluation_model": {}}
    for name, (preset, overrides) in SIZES.items():
        its = 1 if name.startswith("paper") else args.iterations
        out["sec_per_iteration"][name] = round(seconds_per_iteration(data, preset, overrides, its), 3)
    out["sec_per_evaluation_model"]["quick (300 epochs, width 64, 2000 test digits)"] = round(seconds_per_evaluation(data, "quick"), 2)
    if not args.skip_paper_eval:
        out["sec_per_evaluation_model"]["paper (1000 epochs, width 128, 10000 test digits)"] = round(seconds_per_evaluation(data, "paper-sparse"), 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
