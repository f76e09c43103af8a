"""Do seeded runs give the same numbers under different CPU kernels? One JSON line per variant.

Each variant runs ``tune-distill run`` (``--preset`` and ``--set`` as given) in a fresh process
under its own environment: the CPU kernels ATen dispatches to (``ATEN_CPU_CAPABILITY``), MKL's
code path (``MKL_CBWR``; ``MKL_ENABLE_INSTRUCTIONS`` caps it as an older CPU would), oneDNN's
(``ONEDNN_MAX_CPU_ISA``, or oneDNN off: ``torch.backends.mkldnn.enabled = False``) and the
thread count. Printed per variant: the accuracy, a hash of the learned points (equal hashes:
the same set to the bit), and the seconds of distillation and evaluation.

    python benchmarks/bench_reproduce.py --data-dir ../shared/data/mnist [--preset quick] \\
        [--set iterations=20 ...] [--variants default,aten_avx2,...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PORTABLE = {"TUNE_DISTILL_PORTABLE": "1"}
# name -> environment on top of the caller's (OMP_NUM_THREADS pins torch's threads too)
VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "aten_avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "aten_default": {"ATEN_CPU_CAPABILITY": "default"},
    "threads1": {"OMP_NUM_THREADS": "1"},
    "no_mkldnn": {"BENCH_NO_MKLDNN": "1"},
    "mkl_cbwr": {"MKL_CBWR": "COMPATIBLE"},
    "mkl_avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "onednn_avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    # An older CPU, as far as this one can act it: MKL and oneDNN capped at AVX2, ATen at AVX2.
    "as_avx2_cpu": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "portable": PORTABLE,
    "portable_as_avx2_cpu": {**PORTABLE, "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
CHILD = """
import os, sys, torch
if os.environ.get("BENCH_NO_MKLDNN"):
    torch.backends.mkldnn.enabled = False
from tune_distill.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_variant(name: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, **VARIANTS[name]}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-c", CHILD, "run", "--preset", args.preset, "--seed", str(args.seed),
               "--data-dir", args.data_dir, "--out", str(out)]
        for pair in args.set or []:
            cmd += ["--set", pair]
        started = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode:
            return {"variant": name, "error": proc.stderr.strip().splitlines()[-1:]}
        metrics = json.loads((out / "metrics.json").read_text())
        points = np.load(out / "synthetic.npz")["points"]
    return {"variant": name, "env": VARIANTS[name], "acc_mean": metrics["acc_mean"],
            "accuracies": metrics["accuracies"], "points_sha256": hashlib.sha256(points.tobytes()).hexdigest()[:16],
            "distill_seconds": round(metrics["distill_seconds"], 1), "eval_seconds": round(metrics["eval_seconds"], 1),
            "wall_seconds": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    args = parser.parse_args()
    for name in args.variants.split(","):
        print(json.dumps(run_variant(name, args)), flush=True)


if __name__ == "__main__":
    main()
