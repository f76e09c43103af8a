"""Searches on a real Ray cluster (one per test session), real sqlite studies and real MNIST.

Trials use a tiny config (3 distillation iterations, one small ConvNet for 30 epochs on 300
digits) so each seed takes about a second; what is tested is the search system around it.
Interrupted drivers run as subprocesses (``python -m tune_distill.cli search ... --address``)
joined to the session's cluster, and are stopped with SIGINT or SIGKILL.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from plyfile import PlyData

from tune_distill import UserError, load_results
from tune_distill.recipe.artifacts import load_synthetic
from tune_distill.cli import main
from tune_distill.tune import search, space_from_dict
from tune_distill.tune.results import BASE_FILE, SPACE_FILE, leaderboard
from tune_distill.tune.space import GPU_TRIALS
from tune_distill.tune.tuner import trial_gpus

TINY = dict(iterations=3, batch_real=8, width=8, points=60, eval_models=1, eval_epochs=30, eval_width=16,
            eval_test_size=300)
REPO = Path(__file__).resolve().parents[1]


def tiny_space(params: dict, **search_settings) -> dict:
    return {"base": {"preset": "quick", "set": dict(TINY)}, "params": params,
            "search": {"seeds": 2, "concurrency": 2, **search_settings}}


def params_of(df, keys):
    return [tuple(row[k] for k in keys) for _, row in df.iterrows()]


def seed_runs(trial_dir: Path) -> list[int]:
    """Seed indices of every seed run the trial finished, from its audit log."""
    log = trial_dir / "seed_runs.jsonl"
    return [json.loads(line)["index"] for line in log.read_text().splitlines() if line.strip()]


def test_small_search_results_export_report(ray_cluster, mnist_dir, tmp_path, capsys):
    # What is matched (gradient or distribution) is searched beside depth and lr.
    space = space_from_dict(tiny_space({"depth": {"choice": [2, 3]}, "lr": {"loguniform": [0.02, 0.5]},
                                        "matching": {"choice": ["gradient", "distribution"]}},
                                       num_samples=3, objective="robust"))
    outcome = search(space, name="small", storage=tmp_path, data_dir=mnist_dir)
    assert not outcome.interrupted and outcome.finished == 3
    df = load_results("small", storage=tmp_path)
    assert list(df.columns) == [
        "trial", "trial_id", "status", "depth", "lr", "matching", "seeds_done", "acc_seed0", "acc_seed1", "acc_mean", "acc_std",
        "acc_min", "objective", "pareto", "best_seed", "seconds", "distill_seconds", "stored_points", "stored_floats", "node",
        "split", "synthetic", "error", "trial_dir"]
    assert df["trial"].tolist() == [1, 2, 3] and (df["status"] == "done").all()
    assert (df["seeds_done"] == 2).all() and df["trial_id"].is_unique
    assert df["matching"].isin(["gradient", "distribution"]).all() and df["objective"].dtype == float
    accs = df[["acc_seed0", "acc_seed1"]].to_numpy()
    assert ((accs > 0.1) & (accs <= 1)).all()  # above chance: real trainings on real digits
    assert np.allclose(df["acc_mean"], accs.mean(1)) and np.allclose(df["acc_min"], accs.min(1))
    assert np.allclose(df["objective"], df["acc_mean"] - df["acc_std"])  # robust, k = 1
    assert df["best_seed"].isin([0, 1]).all() and (df["seconds"] > 0).all() and (df["split"] == "test").all()
    assert all(Path(p).is_file() for p in df["synthetic"])
    # The Optuna study lives in sqlite inside the experiment folder, one trial per Tune trial.
    study = optuna.load_study(study_name="small", storage=f"sqlite:///{tmp_path / 'small' / 'optuna.db'}")
    assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(df["objective"]))
    # Every trial's full config (base + its params) as config/<key> columns, after the others: a key
    # the space fixes holds the base's value, a searched key its param column's.
    full = load_results("small", storage=tmp_path, config=True)
    base = yaml.safe_load((tmp_path / "small" / BASE_FILE).read_text())
    assert list(full.columns) == [*df.columns, *(f"config/{k}" for k in base)] == [*df.columns, *full.attrs["config"]]
    assert base["pooling"] == "avg" and (full["config/pooling"] == "avg").all()  # quick's, not searched
    assert (full["config/width"] == TINY["width"]).all()
    for key in ("depth", "lr", "matching"):
        assert full[f"config/{key}"].tolist() == full[key].tolist() == df[key].tolist()

    # CLI views: table, csv, json, markdown, group-by, where.
    capsys.readouterr()
    assert main(["results", "small", "--storage", str(tmp_path), "--format", "json", "--top", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and rows[0]["objective"] >= rows[1]["objective"]
    assert list(rows[0]) == list(df.columns)  # the full config only when asked for
    assert main(["results", "small", "--storage", str(tmp_path), "--format", "json", "--columns", "all"]) == 0
    assert list(json.loads(capsys.readouterr().out)[0]) == list(full.columns)
    assert main(["results", "small", "--storage", str(tmp_path), "--format", "csv", "--columns",
                 "trial,config/pooling,config/lr", "--where", "config/depth == 2"]) == 0
    chosen = capsys.readouterr().out.splitlines()
    assert chosen[0] == "trial,config/pooling,config/lr" and len(chosen) == 1 + (df["depth"] == 2).sum()
    assert all(line.split(",")[1] == "avg" for line in chosen[1:])
    assert main(["results", "small", "--storage", str(tmp_path), "--group-by", "config/pooling",
                 "--format", "csv"]) == 0
    pooled = capsys.readouterr().out.splitlines()  # one group: the pooling every trial shares
    assert pooled[0] == "config/pooling,mean,std,count" and len(pooled) == 2 and pooled[1].startswith("avg,")
    assert pooled[1].endswith(",3")
    assert main(["results", "small", "--storage", str(tmp_path), "--group-by", "depth", "--format", "csv"]) == 0
    grouped = capsys.readouterr().out.splitlines()
    assert grouped[0] == "depth,mean,std,count" and sum(int(r.split(",")[-1]) for r in grouped[1:]) == 3
    assert main(["results", "small", "--storage", str(tmp_path), "--where", "depth == 2", "--format", "markdown"]) == 0
    assert capsys.readouterr().out.startswith("| trial |")
    assert main(["results", "small", "--storage", str(tmp_path), "--where", "nosuch > 1"]) == 2
    assert "columns:" in capsys.readouterr().err

    # Export: the best seed's set in the engine's format, one PLY per cloud, a leaderboard.
    out = tmp_path / "exported"
    assert main(["export", "small", "--storage", str(tmp_path), "--top", "2", "--out", str(out)]) == 0
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    best = leaderboard(df).iloc[0]
    assert [f.name for f in folders] == [f"01_trial{best['trial']}", f"02_trial{leaderboard(df).iloc[1]['trial']}"]
    points, labels = load_synthetic(folders[0] / "synthetic.npz")
    expected, _ = load_synthetic(best["synthetic"])
    assert points.shape == (10, 60, 3) and labels.tolist() == list(range(10)) and np.array_equal(points, expected)
    assert (folders[0] / "synthetic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert yaml.safe_load((folders[0] / "config.yaml").read_text())["seed"] == best["best_seed"]
    metrics = json.loads((folders[0] / "metrics.json").read_text())
    assert metrics["search"]["objective"] == pytest.approx(best["objective"])
    assert metrics["search"]["params"] == {"depth": best["depth"], "lr": best["lr"], "matching": best["matching"]}
    plys = sorted((folders[0] / "ply").glob("*.ply"))
    assert len(plys) == 10
    vertex = PlyData.read(str(folders[0] / "ply" / "class3_0.ply"))["vertex"]
    cloud = points[labels.tolist().index(3)]
    assert np.allclose(vertex["x"], cloud[:, 2]) and np.allclose(vertex["y"], -cloud[:, 1])
    board = (out / "leaderboard.csv").read_text().splitlines()
    assert len(board) == 4 and board[0].startswith("rank,trial,")
    # Exporting again replaces this experiment's folders, but never removes another's.
    assert main(["export", "small", "--storage", str(tmp_path), "--top", "1", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [folders[0].name]
    other = out / "07_trial7"
    other.mkdir()
    (other / "metrics.json").write_text(json.dumps({"search": {"experiment": str(tmp_path / "other")}}))
    capsys.readouterr()
    assert main(["export", "small", "--storage", str(tmp_path), "--out", str(out)]) == 2
    assert "holds 07_trial7, not exported from 'small'" in capsys.readouterr().err
    assert other.is_dir() and (out / folders[0].name / "synthetic.npz").is_file()

    # Report: PNG plots and a markdown summary.
    assert main(["report", "small", "--storage", str(tmp_path)]) == 0
    report = tmp_path / "small" / "report"
    for name in ("objective_by_param.png", "importances.png", "seeds.png"):
        assert (report / name).read_bytes()[:4] == b"\x89PNG"
    summary = (report / "summary.md").read_text()
    assert "## Best trial" in summary and f"Trial #{best['trial']}" in summary
    assert f"matching={best['matching']}" in summary


def test_same_experiment_seed_samples_the_same_configs(ray_cluster, mnist_dir, tmp_path):
    raw = tiny_space({"depth": {"choice": [1, 2, 3]}, "lr": {"loguniform": [0.01, 1.0]},
                      "momentum": {"uniform": [0.0, 0.9]}}, num_samples=3, seeds=1, concurrency=1, seed=5)
    raw["base"]["set"]["iterations"] = 0  # the sampled configs are what is compared, not the training
    keys = ["depth", "lr", "momentum"]
    first = search(space_from_dict(raw), name="a", storage=tmp_path, data_dir=mnist_dir, progress=False).results
    again = search(space_from_dict(raw), name="b", storage=tmp_path, data_dir=mnist_dir, progress=False).results
    assert params_of(first, keys) == params_of(again, keys)
    assert len(set(params_of(first, keys))) == 3
    raw["search"]["seed"] = 6
    other = search(space_from_dict(raw), name="c", storage=tmp_path, data_dir=mnist_dir, progress=False).results
    assert params_of(other, keys) != params_of(first, keys)


def test_batch_proposes_each_batch_after_the_last_one_ended(ray_cluster, mnist_dir, tmp_path):
    # Trials of unequal length (eval_epochs 10..150): without batch, trial #3 is proposed as soon
    # as the first of #1 and #2 ends, from a study that depends on which one that was.
    raw = tiny_space({"eval_epochs": {"int": [10, 150]}, "lr": {"loguniform": [0.01, 1.0]}},
                     num_samples=6, seeds=1, concurrency=2, batch=True, seed=3)
    del raw["base"]["set"]["eval_epochs"]
    outcome = search(space_from_dict(raw), name="batched", storage=tmp_path, data_dir=mnist_dir, progress=False)
    assert outcome.finished == 6 and (outcome.results["status"] == "done").all()
    trials = optuna.load_study(study_name="batched", storage=f"sqlite:///{tmp_path / 'batched' / 'optuna.db'}").trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 6
    for t in trials[2:]:
        earlier = trials[:t.number - t.number % 2]  # every trial of the batches before this one's
        assert t.datetime_start >= max(e.datetime_complete for e in earlier), t.number


def test_batch_needs_optuna_and_a_concurrency():
    with pytest.raises(UserError, match="search.batch needs search.concurrency"):
        space_from_dict(tiny_space({"depth": {"choice": [2, 3]}}, concurrency=None, batch=True))
    with pytest.raises(UserError, match="search.batch: only optuna"):
        space_from_dict(tiny_space({"depth": {"choice": [2, 3]}}, algorithm="grid", batch=True))


def test_errored_trial_is_recorded_and_the_rest_complete(ray_cluster, mnist_dir, tmp_path):
    # device=cuda on a machine without CUDA: run() raises in the trial, an honest failure.
    if __import__("torch").cuda.is_available():
        pytest.skip("needs a machine without CUDA for device=cuda to fail")
    raw = tiny_space({"device": {"choice": ["cpu", "cuda"]}, "depth": {"choice": [2, 3]}},
                     algorithm="grid", seeds=1)
    outcome = search(space_from_dict(raw), name="errors", storage=tmp_path, data_dir=mnist_dir, progress=False)
    df = outcome.results
    assert len(df) == 4 and not outcome.interrupted
    errored = df[df["status"] == "error"]
    assert sorted(errored["device"]) == ["cuda", "cuda"]
    assert all("no CUDA device is visible" in e for e in errored["error"])
    assert errored["objective"].isna().all() and errored["synthetic"].isna().all()
    done = df[df["status"] == "done"]
    assert sorted(done["device"]) == ["cpu", "cpu"] and done["objective"].notna().all()


LOCAL_CLUSTER = """
import os, ray
from tune_distill.tune.tuner import _connect
_connect(None)
@ray.remote
def niceness():
    return os.nice(0)
print(ray.get(niceness.remote()), os.nice(0))
"""


def test_a_local_cluster_runs_its_workers_at_the_drivers_priority(tmp_path):
    # Ray's own default, niceness 15, lets any other busy process of the machine starve a
    # search's trials; the cluster a search starts for itself keeps them at the driver's.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_worker_niceness")}
    done = subprocess.run([sys.executable, "-c", LOCAL_CLUSTER], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    worker, driver = map(int, done.stdout.split()[-2:])
    assert worker == driver


def test_a_trial_killed_for_memory_is_an_error_row_that_says_so(mnist_dir, tmp_path):
    # A cluster of its own whose memory monitor kills any busy worker (threshold 1% of the
    # machine's memory): the trial errors, the search ends normally, and its row names the cause
    # (Ray's report ends with a process table, not an exception line).
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(tiny_space({"depth": {"choice": [2]}}, algorithm="grid", seeds=1)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"RAY_memory_usage_threshold": "0.01", "RAY_memory_monitor_refresh_ms": "50"}
    cmd = [sys.executable, "-m", "tune_distill.cli", "search", str(space_file), "--name", "oom", "--storage", str(tmp_path)]
    done = subprocess.run(cmd + (["--data-dir", str(mnist_dir)] if mnist_dir else []), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    [error] = load_results(tmp_path / "oom")["error"]
    assert error.startswith("OutOfMemoryError: Ray killed the trial's worker, the node running low on memory")


def test_gpus_on_a_cluster_without_gpus_fail_before_the_search(ray_cluster, mnist_dir, tmp_path):
    raw = tiny_space({"depth": {"choice": [2, 3]}}, algorithm="grid", resources={"cpus": 1, "gpus": 0.5})
    raw["base"]["set"]["device"] = "auto"
    with pytest.raises(UserError, match="has none") as err:
        search(space_from_dict(raw), name="gpu", storage=tmp_path, data_dir=mnist_dir)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "gpu").exists()  # nothing started, nothing written


def test_gpu_share_defaults_to_a_quarter_gpu_only_for_gpu_configs_on_gpu_clusters():
    assert trial_gpus(None, "auto", 8) == trial_gpus(None, "cuda", 1) == 1 / GPU_TRIALS == 0.25
    assert trial_gpus(None, "cpu", 8) == trial_gpus(None, "auto", 0) == 0  # a CPU config, or no GPU to share
    assert trial_gpus(0.5, "auto", 8) == 0.5 and trial_gpus(0, "auto", 8) == 0  # --gpus-per-trial decides


def test_a_budgeted_search_whose_driver_died_before_any_trial_runs_on_rerun(ray_cluster, mnist_dir, tmp_path):
    # The driver writes base_config.yaml and space.yaml, then starts Tune; killed in between, it
    # leaves an experiment with no trial at all. That is an interruption, not a spent budget.
    space = space_from_dict(tiny_space({"depth": {"choice": [2]}}, algorithm="grid", seeds=1, time_budget_s=600))
    exp = tmp_path / "early"
    exp.mkdir()
    (exp / BASE_FILE).write_text(yaml.safe_dump(space.base_values(), sort_keys=False))
    (exp / SPACE_FILE).write_text(yaml.safe_dump(space.to_dict(), sort_keys=False))
    outcome = search(space, name="early", storage=tmp_path, data_dir=mnist_dir, progress=False)
    assert (outcome.finished, outcome.budget_spent, outcome.interrupted) == (1, False, False)


def _driver(space_file: Path, name: str, storage: Path, address: str, mnist_dir, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tune_distill.cli", "search", str(space_file), "--name", name,
           "--storage", str(storage), "--address", address, *extra]
    if mnist_dir:
        cmd += ["--data-dir", str(mnist_dir)]
    log = open(storage / f"{name}.log", "ab")
    return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))


def _wait_for_checkpoints(exp_dir: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    # Returns at the first checkpoint; the deadline only bounds a hang. It is generous because a
    # trial's first seed takes seconds on an idle 2-core machine but minutes on a busy one.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(exp_dir.glob("trial_*/checkpoint_*"))) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the driver exited ({proc.returncode}) before {n} checkpoint(s)")
        time.sleep(0.1)
    raise AssertionError(f"no {n} checkpoint(s) in {timeout} s")


def _wait_for_idle_cluster(timeout: float = 120) -> None:
    """Wait until the session cluster has taken back every CPU a killed driver's trials held.

    The cluster outlives the killed driver (a user's own cluster would die with it), and Ray frees
    the dead job's actors and placement groups asynchronously: a search started before that waits
    for CPUs that are still reserved.
    """
    import ray

    total = ray.cluster_resources().get("CPU", 0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0) >= total:
            return
        time.sleep(0.2)
    raise AssertionError(f"the killed driver's CPUs were not freed in {timeout} s: {ray.available_resources()}")


def _assert_complete_without_repeats(df, n_trials: int, keys: list[str], seeds: int) -> None:
    assert len(df) == n_trials and df["trial_id"].is_unique
    assert (df["status"] == "done").all() and (df["seeds_done"] == seeds).all()
    assert len(set(params_of(df, keys))) == n_trials  # no config ran as two trials
    for trial_dir in df["trial_dir"]:
        # No seed ran to the end twice across the interruption. (A seed cut off mid-run by the
        # interruption is run again; a seed whose log line the kill prevented is missing, not
        # repeated, and its checkpoint still counts it: seeds_done above.)
        runs = seed_runs(Path(trial_dir))
        assert len(runs) == len(set(runs)), runs


def test_sigint_then_resume_finishes_the_grid(ray_cluster, mnist_dir, tmp_path):
    raw = tiny_space({"depth": {"choice": [1, 2, 3]}, "pooling": {"choice": ["max", "avg"]}},
                     algorithm="grid", concurrency=1)
    space_file = tmp_path / "grid.yaml"
    space_file.write_text(yaml.safe_dump(raw))
    proc = _driver(space_file, "interrupted", tmp_path, ray_cluster, mnist_dir)
    _wait_for_checkpoints(tmp_path / "interrupted", 1, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130  # fit() returned with a partial grid: "interrupted, resume with"
    partial = load_results("interrupted", storage=tmp_path)
    assert (partial["status"] == "done").sum() < 6
    # The command the driver printed resumes it as it is, without the space file.
    log = (tmp_path / "interrupted.log").read_text()
    hint = shlex.split(next(ln for ln in log.splitlines() if "resume with" in ln).split("resume with", 1)[1])
    assert hint[:2] == ["tune-distill", "search"] and str(space_file) not in hint
    resumed = subprocess.Popen([sys.executable, "-m", "tune_distill.cli", *hint[1:]], cwd=REPO,
                               stdout=open(tmp_path / "interrupted.log", "ab"), stderr=subprocess.STDOUT)
    assert resumed.wait(timeout=180) == 0, (tmp_path / "interrupted.log").read_text()[-3000:]
    df = load_results("interrupted", storage=tmp_path)
    _assert_complete_without_repeats(df, 6, ["depth", "pooling"], 2)
    # One trial at a time in one reused actor per driver session: concurrency and reuse_actors hold.
    pids = {json.loads(line)["pid"] for d in df["trial_dir"] for line in (Path(d) / "seed_runs.jsonl").read_text().splitlines()}
    assert len(pids) <= 2, pids


@pytest.mark.parametrize("batch,cut", [(False, False), (True, True)], ids=["unbatched", "batched-state-cut-off"])
def test_sigkill_of_the_driver_then_rerun_finishes_the_search(ray_cluster, mnist_dir, tmp_path, batch, cut):
    # Batched, the restored searcher also holds the batch's ended trials it has not yet told TPE.
    raw = tiny_space({"depth": {"choice": [1, 2, 3]}, "lr": {"loguniform": [0.02, 0.5]}}, num_samples=5, seed=3,
                     batch=batch)
    space_file = tmp_path / "tpe.yaml"
    space_file.write_text(yaml.safe_dump(raw))
    proc = _driver(space_file, "killed", tmp_path, ray_cluster, mnist_dir)
    _wait_for_checkpoints(tmp_path / "killed", 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    _wait_for_idle_cluster()
    if cut:
        # A kill while Tune copies its state into the folder leaves those files empty or cut off
        # (it truncates each before writing it): the worst case, made certain here.
        state_files = [*(tmp_path / "killed").glob("experiment_state-*.json"),
                       *(tmp_path / "killed").glob("searcher-state-*.pkl")]
        assert len(state_files) == 2
        for f in state_files:
            f.write_bytes(b"")
    before = load_results("killed", storage=tmp_path)
    assert (before["status"] == "done").sum() < 5
    # Re-running the same name (no --resume needed) restores the experiment and finishes it.
    outcome = search(space_from_dict(raw), name="killed", storage=tmp_path, data_dir=mnist_dir, progress=False)
    assert outcome.resumed and not outcome.interrupted
    df = outcome.results
    _assert_complete_without_repeats(df, 5, ["depth", "lr"], 2)
    # Trials finished before the kill kept their results.
    kept = before[before["status"] == "done"]
    merged = df.set_index("trial_id").loc[kept["trial_id"]]
    assert np.allclose(merged["objective"], kept["objective"].to_numpy())
    # The study holds one COMPLETE trial per Tune trial; any left RUNNING by the kill is closed.
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{tmp_path / 'killed' / 'optuna.db'}")
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 5
    assert not any(t.state.name == "RUNNING" for t in study.trials)


def test_resumed_searcher_keeps_a_trial_the_study_already_closed(tmp_path):
    # The window a SIGKILL can hit: the study recorded a trial's end, Tune's snapshot did not, so
    # Tune restores the trial as unfinished and it reports its final state to the searcher again.
    from tune_distill.tune.raystate import ResumableOptunaSearch

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = ResumableOptunaSearch(space={"lr": optuna.distributions.FloatDistribution(0.01, 1.0, log=True)},
                                     metric="objective", mode="max", storage=optuna.storages.RDBStorage(url),
                                     study_name="s", sampler=optuna.samplers.TPESampler(seed=0))
    assert "lr" in searcher.suggest("t1")
    study = optuna.load_study(study_name="s", storage=url)  # the killed driver's own tell
    study.tell(study.trials[0].number, 0.75)
    searcher.on_trial_result("t1", {"objective": 0.5, "training_iteration": 1})
    searcher.on_trial_result("t1", {"objective": 0.6, "training_iteration": 2})
    searcher.on_trial_complete("t1", {"objective": 0.6, "training_iteration": 2})
    (trial,) = optuna.load_study(study_name="s", storage=url).trials
    assert trial.state.name == "COMPLETE" and trial.value == 0.75 and trial.intermediate_values == {}
    # Trials the study has not closed are reported and told as before.
    searcher.suggest("t2")
    searcher.on_trial_result("t2", {"objective": 0.4, "training_iteration": 1})
    searcher.on_trial_complete("t2", {"objective": 0.45, "training_iteration": 1})
    second = optuna.load_study(study_name="s", storage=url).trials[1]
    assert second.value == 0.45 and second.intermediate_values == {1: 0.4}


@pytest.mark.skipif(not Path("/proc/self/statm").is_file() or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="glibc on Linux only")
def test_a_trial_hands_the_memory_it_freed_back_to_the_system():
    # A reused worker runs each trial in a thread of its own; glibc keeps what a thread freed in
    # that thread's arena until malloc_trim, so a worker would keep every trial's peak. (The first
    # trial's pieces are mapped one by one and unmapped on free; freeing them raises glibc's
    # threshold, so from the second trial on they come from the arena and stay.)
    import threading

    import torch

    from tune_distill.tune.trainable import release_memory

    def rss_gb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30

    def trial() -> None:
        pieces = [torch.ones(250_000) for _ in range(1000)]  # 1 GB in pieces of 1 MB
        del pieces

    base = rss_gb()
    for _ in range(2):
        worker = threading.Thread(target=trial)
        worker.start()
        worker.join()
    kept = rss_gb()
    assert kept > base + 0.8  # what the test is about: without the release, the second trial's gigabyte stays
    release_memory()
    assert rss_gb() < kept - 0.5
