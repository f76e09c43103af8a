"""Multi-objective searches: accuracy against storage, the Pareto front, its table and picture.

The end-to-end test runs a real two-objective Optuna search on real MNIST with the tiny trial
config of test_tune_search.py, interrupts its driver with SIGINT and resumes it, then checks that
the DataFrame's ``pareto`` column, ``results --pareto``, the study's own Pareto front and the
report agree.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys

import numpy as np
import optuna
import pytest
import yaml

from tune_distill import UserError, load_results
from tune_distill.cli import main
from tune_distill.tune import space_from_dict
from tune_distill.tune.objective import pareto_mask
from test_tune_search import REPO, _driver, _wait_for_checkpoints, tiny_space


def brute_force_front(values: np.ndarray, modes: list[str]) -> list[bool]:
    """Row i is on the front unless some row j is no worse everywhere and better somewhere."""
    def better_or_equal(a: float, b: float, mode: str) -> bool:
        return a >= b if mode == "max" else a <= b

    out = []
    for i, row in enumerate(values):
        if any(math_nan(v) for v in row):
            out.append(False)
            continue
        dominated = False
        for j, other in enumerate(values):
            if j == i or any(math_nan(v) for v in other):
                continue
            if all(better_or_equal(o, r, m) for o, r, m in zip(other, row, modes)) and any(o != r for o, r in zip(other, row)):
                dominated = True
        out.append(not dominated)
    return out


def math_nan(v: float) -> bool:
    return v != v


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pareto_mask_matches_a_brute_force_filter(k):
    rng = np.random.default_rng(k)
    for trial in range(50):
        n = int(rng.integers(1, 25))
        values = rng.integers(0, 5, size=(n, k)).astype(float)  # small integers: many ties and equal rows
        values[rng.random(n) < 0.1, 0] = np.nan
        modes = [str(m) for m in rng.choice(["max", "min"], size=k)]
        assert pareto_mask(values, modes).tolist() == brute_force_front(values, modes), (values, modes)


def test_objective_lists_are_validated_in_one_line():
    def error(**search) -> str:
        with pytest.raises(UserError) as info:
            space_from_dict({"params": {"lr": {"uniform": [0.01, 0.1]}}, "search": search})
        assert "\n" not in str(info.value)
        return str(info.value)

    assert "did you mean 'stored_points'" in error(objective=["acc_mean", "stored_pts"], mode=["max", "min"])
    assert "exactly one accuracy objective" in error(objective=["acc_mean", "acc_min"], mode=["max", "max"])
    assert "exactly one accuracy objective" in error(objective="stored_points", mode="min")
    assert "one mode per objective" in error(objective=["acc_mean", "stored_points"], mode="max")
    assert "e.g. mode: [max, min]" in error(objective=["acc_mean", "stored_points"], mode=["max"])
    assert "max or min" in error(objective=["acc_mean", "stored_points"], mode=["max", "least"])
    assert "multi-objective search needs scheduler: fifo" in error(objective=["acc_mean", "distill_seconds"],
                                                                   mode=["max", "min"], scheduler="asha")
    assert "nsga2 is an optuna sampler" in error(sampler="nsga2", algorithm="random")
    s = space_from_dict({"params": {"lr": {"uniform": [0.01, 0.1]}},
                         "search": {"objective": ["stored_floats", "robust"], "mode": ["min", "max"]}}).search
    assert (s.multi, s.accuracy, s.accuracy_mode, s.metrics) == (True, "robust", "max", ["stored_floats", "objective"])


def test_two_objective_search_resumes_and_its_front_agrees_everywhere(ray_cluster, mnist_dir, tmp_path, capsys):
    raw = tiny_space({"ipc": {"choice": [1, 2]}, "points": {"choice": [20, 60]}}, num_samples=4, seeds=1,
                     concurrency=1, objective=["acc_mean", "stored_points"], mode=["max", "min"])
    del raw["base"]["set"]["points"]  # searched here
    space_file = tmp_path / "frontier.yaml"
    space_file.write_text(yaml.safe_dump(raw))
    proc = _driver(space_file, "frontier", tmp_path, ray_cluster, mnist_dir)
    _wait_for_checkpoints(tmp_path / "frontier", 1, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    resumed = subprocess.run([sys.executable, "-m", "tune_distill.cli", "search", "--name", "frontier", "--resume",
                              "--storage", str(tmp_path), "--address", ray_cluster,
                              *(["--data-dir", str(mnist_dir)] if mnist_dir else [])],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    log = (tmp_path / "frontier.log").read_text()
    assert "objectives acc_mean (max), stored_points (min)" in log

    df = load_results("frontier", storage=tmp_path)
    assert len(df) == 4 and (df["status"] == "done").all()
    # Every trial reports what its set stores per class: ipc x points points, 3 floats each.
    assert df["stored_points"].tolist() == (df["ipc"] * df["points"]).astype(float).tolist()
    assert np.array_equal(df["stored_floats"], 3 * df["stored_points"]) and (df["distill_seconds"] > 0).all()
    values = df[["objective", "stored_points"]].to_numpy()
    assert df["pareto"].tolist() == brute_force_front(values, ["max", "min"])
    assert df.attrs["objectives"] == [("objective", "max"), ("stored_points", "min")]
    # Optuna's own multi-objective study holds the same front.
    study = optuna.load_study(study_name="frontier", storage=f"sqlite:///{tmp_path / 'frontier' / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert sorted(tuple(t.values) for t in study.best_trials) == sorted(map(tuple, values[df["pareto"]]))

    capsys.readouterr()
    assert main(["results", "frontier", "--storage", str(tmp_path), "--pareto", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["trial"] for r in rows] == df[df["pareto"]].sort_values(["stored_points", "trial"])["trial"].tolist()
    assert main(["results", "frontier", "--storage", str(tmp_path), "--pareto"]) == 0
    table = capsys.readouterr().out
    assert "the front" in table and "stored_points" in table and "pareto" in table

    assert main(["report", "frontier", "--storage", str(tmp_path)]) == 0
    report = tmp_path / "frontier" / "report"
    assert (report / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    summary = (report / "summary.md").read_text()
    front_rows = summary.split("## Pareto front", 1)[1].split("##", 1)[0]
    for _, row in df[df["pareto"]].iterrows():
        assert f"| {row['trial']} | {row['ipc']}x{row['points']} distilled |" in front_rows  # 3 iterations: learned
