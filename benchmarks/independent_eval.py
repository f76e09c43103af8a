"""Check a reported accuracy with code that shares nothing with tune_distill.

Reads ``synthetic.npz`` and the MNIST test files with plain numpy, renders each cloud to a binary
28x28 image, trains a separately written DC-style ConvNet (conv-instance norm-ReLU-avg pool x 3,
SGD 0.01/0.9/5e-4, lr / 10 at half, random shifts and rotations as augmentation) and prints the
test accuracy as JSON. Agreement with the run's ``metrics.json`` (within the spread across seeds)
says the number the project reports is the number the synthetic set earns.

    python benchmarks/independent_eval.py RUN_DIR --mnist ../shared/data/mnist [--models 2 --epochs 300 --width 64]
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def read_images(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        raw = f.read()
    n, h, w = (int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(3))
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, h, w)


def read_labels(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)


def rasterise(points: np.ndarray) -> np.ndarray:
    """(N, P, 3) points (depth, row, col) -> (N, 1, 28, 28) binary images."""
    images = np.zeros((points.shape[0], 1, 28, 28), np.float32)
    cells = np.clip(np.rint(points[..., 1:]), 0, 27).astype(int)
    for i in range(points.shape[0]):
        images[i, 0, cells[i, :, 0], cells[i, :, 1]] = 1.0
    return images


def make_net(width: int) -> nn.Module:
    def block(cin: int, pad: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, width, 3, padding=pad), nn.GroupNorm(width, width), nn.ReLU(), nn.AvgPool2d(2)]

    return nn.Sequential(*block(1, 3), *block(width, 1), *block(width, 1), nn.Flatten(), nn.Linear(width * 16, 10))


def jitter(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random rotation (+-30 degrees) and shift (+-3 px) per image."""
    n = x.shape[0]
    a = (torch.rand(n, generator=g) - 0.5) * math.radians(60)
    t = (torch.rand(n, 2, generator=g) - 0.5) * 6 * 2 / 28
    theta = torch.stack([torch.stack([a.cos(), -a.sin(), t[:, 0]], 1), torch.stack([a.sin(), a.cos(), t[:, 1]], 1)], 1)
    return F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--mnist", type=Path, required=True)
    p.add_argument("--models", type=int, default=2)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--test-size", type=int, default=10000)
    args = p.parse_args()
    torch.set_num_threads(2)
    with np.load(args.run_dir / "synthetic.npz") as f:
        x = torch.from_numpy(rasterise(f["points"]))
        y = torch.from_numpy(f["labels"].astype(np.int64))
    test_x = torch.from_numpy((read_images(args.mnist / "t10k-images-idx3-ubyte.gz") > 75).astype(np.float32))[:, None]
    test_y = torch.from_numpy(read_labels(args.mnist / "t10k-labels-idx1-ubyte.gz"))
    test_x, test_y = test_x[: args.test_size], test_y[: args.test_size]
    accs = []
    for k in range(args.models):
        torch.manual_seed(1000 + k)
        g = torch.Generator().manual_seed(1000 + k)
        net = make_net(args.width)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [args.epochs // 2], 0.1)
        for _ in range(args.epochs):
            loss = F.cross_entropy(net(jitter(x, g)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        with torch.no_grad():
            pred = torch.cat([net(b).argmax(1) for b in test_x.split(1000)])
        accs.append(float((pred == test_y).float().mean()))
    reported = json.loads((args.run_dir / "metrics.json").read_text())
    print(json.dumps({"independent_acc_mean": float(np.mean(accs)), "independent_acc_std": float(np.std(accs)),
                      "independent_accuracies": accs, "reported_acc_mean": reported["acc_mean"],
                      "reported_acc_std": reported["acc_std"], "models": args.models, "epochs": args.epochs,
                      "width": args.width, "test_size": int(len(test_y))}, indent=2))


if __name__ == "__main__":
    main()
