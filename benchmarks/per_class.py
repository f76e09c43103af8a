"""Per-class accuracy of shipped 3D synthetic sets on validation and test, printed as JSON.

A table cell gives one number per split; this says which classes make it. For each cell folder
(``distilled/<table>/<row>/ipc<k>/seed<s>``) it trains one PointNet, the first of the cell's own
evaluator (its ``config.yaml``: protocol, evaluator seed), and prints, per split, the accuracy,
the balanced accuracy (mean over classes) and every class's accuracy. About a minute per IPC 1
cell on one CPU thread:

    python benchmarks/per_class.py distilled/modelnet10/herding-fps-16x64/ipc1/seed0 \\
        --data-dir ../shared/data/modelnet10_pcd1024
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from tune_distill.data import load_dataset
from tune_distill.evaluate.point import EVAL_BATCH, train_one
from tune_distill.evaluate.settings import class_accuracies, predictions
from tune_distill.recipe.artifacts import load_synthetic
from tune_distill.recipe.config import load_config_file, make_config
from tune_distill.recipe.run import eval_seed, eval_settings, split_train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cells", nargs="+", help="cell folders holding config.yaml and synthetic.npz or selection.json")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    loaded = {}
    for cell in map(Path, args.cells):
        cfg = make_config(load_config_file(cell / "config.yaml"))
        if cfg.dataset not in loaded:
            loaded[cfg.dataset] = load_dataset(cfg.dataset, args.data_dir)
        data = loaded[cfg.dataset]
        _, val = split_train(data, cfg.val_size)
        points, labels = load_synthetic(cell, data=data)  # a selection is rebuilt from the data
        seed = eval_seed(cfg)
        net = train_one(torch.from_numpy(points), torch.from_numpy(labels), data.num_classes,
                        replace(eval_settings(cfg), models=1), seed, data.domain.up).eval()
        out: dict = {"cell": str(cell), "evaluator_seed": seed}
        for name, clouds in (("val", val), ("test", data.test)):
            if clouds is None:
                continue
            x, y = clouds.batch(torch.arange(len(clouds))).padded(), clouds.labels
            pred = predictions(net, x, EVAL_BATCH)
            per = class_accuracies(pred, y)
            out[name] = {"acc": round(100 * float((pred == y).double().mean()), 2),
                         "balanced": round(100 * sum(per.values()) / len(per), 2),
                         "per_class": {data.class_names[k]: round(100 * a, 1) for k, a in per.items()}}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
