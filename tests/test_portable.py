"""TUNE_DISTILL_PORTABLE=1: the same seeded run gives the same bits whatever kernels the CPU offers.

A CPU with fewer instructions is acted here by capping what each library may use
(``ATEN_CPU_CAPABILITY=avx2``, ``MKL_ENABLE_INSTRUCTIONS=AVX2``, ``ONEDNN_MAX_CPU_ISA=AVX2``),
each run in a fresh process as a user's would be. A tiny quick-preset run (3 iterations, one
short evaluation) is enough: its points go through the splat, the convolutions and the optimiser.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tune_distill import UserError
from tune_distill.core import portable

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "iterations=3", "--set", "eval_models=1", "--set", "eval_epochs=5", "--set", "eval_test_size=300",
        "--set", "batch_real=8"]
AS_AN_AVX2_CPU = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
LIBRARY_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", portable.VARIABLE)


def quick_run(out: Path, mnist_dir, env: dict[str, str]) -> tuple[str, float]:
    """(hash of the learned points, accuracy) of a tiny run in a fresh process under ``env``."""
    clean = {k: v for k, v in os.environ.items() if k not in LIBRARY_VARIABLES}
    cmd = [sys.executable, "-m", "tune_distill.cli", "run", "--preset", "quick", "--seed", "0", "--out", str(out), *TINY]
    if mnist_dir:
        cmd += ["--data-dir", str(mnist_dir)]
    proc = subprocess.run(cmd, cwd=REPO, env={**clean, "OMP_NUM_THREADS": "2", **env}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    points = np.load(out / "synthetic.npz")["points"]
    return hashlib.sha256(points.tobytes()).hexdigest(), json.loads((out / "metrics.json").read_text())["acc_mean"]


def test_portable_runs_give_the_same_points_whatever_the_cpu_offers(mnist_dir, tmp_path):
    native = quick_run(tmp_path / "native", mnist_dir, {portable.VARIABLE: "1"})
    as_avx2 = quick_run(tmp_path / "avx2", mnist_dir, {portable.VARIABLE: "1", **AS_AN_AVX2_CPU})
    assert as_avx2 == native
    if torch.backends.cpu.get_cpu_capability() != "DEFAULT":
        # Without it, this CPU's own kernels give other points: the setting is what makes them agree.
        assert quick_run(tmp_path / "own", mnist_dir, {})[0] != native[0]


def test_portable_refuses_a_process_whose_kernels_were_already_chosen(monkeypatch):
    for name in LIBRARY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    chosen = torch.backends.cpu.get_cpu_capability()  # torch has chosen now, before the variable
    monkeypatch.setenv(portable.VARIABLE, "1")
    if chosen == "DEFAULT":  # a CPU without vector kernels: portable changes nothing there
        with portable.arithmetic():
            assert not torch.backends.mkldnn.enabled and torch.get_num_threads() == 1
        return
    with pytest.raises(UserError) as info:
        with portable.arithmetic():
            pass
    assert "\n" not in str(info.value) and f"torch chose its {chosen} kernels" in str(info.value)
    assert torch.backends.mkldnn.enabled  # nothing was changed
