"""The function trainable: one trial = one config run over the experiment's seeds.

For each seed it calls ``run()`` (which knows nothing of Ray), writes the seed's run folder
(``synthetic.npz``, ``synthetic.png``, ``metrics.json``, ``history.csv``, ``config.yaml``) into
the trial's working folder, and reports to Tune with that folder as the checkpoint. Reports
happen after every seed and at every intermediate evaluation (``eval_at``), each carrying the
objective over what is known so far, so ASHA can stop a bad trial after its first seed or its
early iterations. ``progress`` (seeds finished, fractional during a seed) is ASHA's time axis.
Once a seed has finished, reports also carry what the set costs (``objective.COSTS``: stored
points and floats per class, distillation seconds), the other objectives of a multi-objective search.

The checkpoint holds every finished seed, so a trial restored after an interruption skips the
seeds it already finished and never runs one twice. The dataset arrives once per worker via
``tune.with_parameters``; the trial's torch threads match its CPU share.

Each finished seed records the node it ran on (``node``: ``<ip>/<node id prefix>``, and the full
``node_id``) in the checkpoint and in ``seed_runs.jsonl``; every report carries ``node`` and
``node_id`` too. Tune retries a trial whose node was lost (``FailureConfig.max_failures``), but an
error of the trial's own (a NaN loss, a config the engine rejects) is a result, not something a
retry fixes: the first one is saved in the trial folder (``trial_error.pkl``), a retry raises it
again at once, before any work, and ``OwnErrorsAreFinal`` makes that retry the last.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import pickle
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from ..recipe.artifacts import save_run
from ..recipe.config import make_config
from ..core.types import Dataset
from ..recipe.run import run
from .objective import costs, summarize
from .results import STATE_FILE, trial_folder

RUNS_LOG = "seed_runs.jsonl"  # in the trial folder: one line per seed run that finished
ERROR_FILE = "trial_error.pkl"  # in the trial folder: the trial's own error, raised again by a retry


@dataclass(frozen=True)
class TrialPlan:
    """What every trial of an experiment shares (fixed when the experiment starts)."""

    base: dict[str, Any]  # the full resolved base config (preset + base.set)
    seeds: tuple[int, ...]
    objective: str  # the accuracy objective (acc_mean, robust or acc_min)
    robust_k: float
    threads: int  # torch threads per trial: its CPU share, at least 1
    experiment_dir: str | None = None  # where trial folders live (trial_<id>/checkpoint_*)


def seed_dir(index: int) -> str:
    return f"seed_{index}"


def node_info() -> dict[str, str]:
    """Where this process runs: ``node`` (``<ip>/<first 8 hex digits of the node id>``, short
    but unique also for several Ray nodes on one machine), ``node_id`` and ``node_ip``."""
    node_id = ray.get_runtime_context().get_node_id()
    node_ip = ray.util.get_node_ip_address()
    return {"node": f"{node_ip}/{node_id[:8]}", "node_id": node_id, "node_ip": node_ip}


def _trial_dir(plan: TrialPlan) -> Path | None:
    """This trial's folder in the experiment (on storage every node reaches), if known."""
    if plan.experiment_dir is None:
        return None
    return Path(plan.experiment_dir) / trial_folder(tune.get_context().get_trial_id())


def trial_metrics(plan: TrialPlan, finished: list[dict], progress: float, partial: float | None = None) -> dict[str, Any]:
    """The flat metrics a trial reports: per-seed accuracies, their summary and the objective.

    ``partial`` is an intermediate accuracy of the seed in progress; it joins the estimate (not
    the per-seed columns) so ASHA can compare trials before their seed finishes.
    """
    accs = [f["acc"] for f in finished]
    out: dict[str, Any] = summarize(accs + ([partial] if partial is not None else []), plan.objective, plan.robust_k)
    out.update({f"acc_seed{f['index']}": f["acc"] for f in finished})
    out["seeds_done"] = len(finished)
    out["progress"] = progress
    out["seconds"] = float(sum(f["seconds"] for f in finished))
    if finished:  # what the set costs (a multi-objective search's other objectives) is known after a seed
        out.update(costs(finished))
        best = max(finished, key=lambda f: f["acc"])
        out["best_seed"] = best["seed"]
    return out


def _finished_in(folder: Path) -> list[dict]:
    try:
        return json.loads((folder / STATE_FILE).read_text())["finished"]
    except (OSError, ValueError, KeyError):
        return []


def _restore(work: Path, plan: TrialPlan) -> list[dict]:
    """Finished seeds of this trial so far, their run folders copied into ``work``.

    Tune hands back the checkpoint its experiment state last recorded. A driver killed after a
    seed's checkpoint was written but before Tune's next state snapshot would make us run that
    seed again, so the trial's own folder is read too and the checkpoint with more seeds wins.
    """
    candidates: list[tuple[list[dict], Any]] = []
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            candidates.append((_finished_in(Path(folder)), checkpoint))
    trial_dir = _trial_dir(plan)
    if trial_dir is not None:
        for folder in sorted(trial_dir.glob("checkpoint_*"), reverse=True):
            finished = _finished_in(folder)
            if finished:
                candidates.append((finished, tune.Checkpoint.from_directory(str(folder))))
                break
    if not candidates:
        return []
    finished, best = max(candidates, key=lambda c: len(c[0]))
    if finished:
        with best.as_directory() as folder:
            shutil.copytree(folder, work, dirs_exist_ok=True)
    return finished


def _log_run(plan: TrialPlan, record: dict) -> None:
    """Append a finished seed to the trial folder's ``seed_runs.jsonl``: an audit trail of resumes."""
    trial_dir = _trial_dir(plan)
    if trial_dir is None:
        return
    path = trial_dir / RUNS_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {k: record[k] for k in ("index", "seed", "acc", "seconds")}
    entry.update(finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"), host=socket.gethostname(), pid=os.getpid(),
                 **node_info())
    with path.open("a") as f:
        f.write(json.dumps(entry) + "\n")


def _save_error(trial_dir: Path | None, exc: Exception) -> None:
    """Keep the trial's own error, so that a retry (``max_failures``) raises it instead of running."""
    if trial_dir is None:
        return
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)  # an exception that pickles but does not load back would hide the error
    except Exception:
        data = pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / ERROR_FILE).write_bytes(data)


def _raise_saved_error(trial_dir: Path | None) -> None:
    if trial_dir is None or not (trial_dir / ERROR_FILE).is_file():
        return
    try:
        exc = pickle.loads((trial_dir / ERROR_FILE).read_bytes())
    except Exception as load_error:  # cut off by a kill during the write: still this trial's error
        exc = RuntimeError(f"this trial failed before; its error could not be read back ({load_error})")
    raise exc


class OwnErrorsAreFinal(tune.Callback):
    """Tune callback (driver side): a trial that raised an error of its own is retried once at most.

    Tune decides on a retry before any callback runs, and counts a lost node and an exception in
    the trial alike. The trainable's saved error makes that retry fail at once; from then on
    ``max_failures`` 0 makes the trial's next failure final, so an errored trial costs one quick
    restart instead of ``MAX_FAILURES``. Stateless, so it pickles with the experiment.
    """

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.path and (Path(trial.path) / ERROR_FILE).is_file():
            trial.max_failures = 0


def train_trial(params: dict[str, Any], data: Dataset, plan: TrialPlan) -> None:
    """Tune's function trainable. ``params`` are the sampled hyperparameters of this trial.

    Ray's own failures (a lost node or object, a killed worker) propagate for Tune to retry
    from the checkpoint; any other error is saved first, so every retry fails with it at once.
    """
    trial_dir = _trial_dir(plan)
    _raise_saved_error(trial_dir)
    try:
        _train(params, data, plan)
    except ray.exceptions.RayError:
        raise
    except Exception as exc:
        _save_error(trial_dir, exc)
        raise
    finally:
        release_memory()


def release_memory() -> None:
    """Hand what a finished trial freed back to the system (glibc's ``malloc_trim``; elsewhere a
    no-op). A reused worker runs each trial in a thread of its own, and glibc keeps the memory a
    thread freed in that thread's arena: without this a worker keeps each trial's peak, and Ray's
    memory monitor may kill it while it sits between trials."""
    try:
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols: libc is among them
    except (OSError, AttributeError):  # not glibc
        pass


def _train(params: dict[str, Any], data: Dataset, plan: TrialPlan) -> None:
    torch.set_num_threads(plan.threads)
    where = node_info()
    labels = {"node": where["node"], "node_id": where["node_id"]}  # Tune adds node_ip and hostname itself
    # Validated once here, at the trial's boundary: a combination the config rejects (cross-key
    # rules the space could not check value by value) makes this trial error with that message.
    config = make_config({**plan.base, **params})
    work = Path(tempfile.mkdtemp(prefix="tune_distill_trial_"))
    try:
        finished = _restore(work, plan)
        done = {f["index"] for f in finished}
        if len(done) == len(plan.seeds):  # restored after its last seed: report the final state again
            tune.report({**trial_metrics(plan, finished, float(len(finished))), **labels})
            return
        for index, seed in enumerate(plan.seeds):
            if index in done:
                continue
            seed_config = config.replace(seed=seed)

            def report(row: dict) -> None:
                # run() reports distillation rows (loss) and intermediate evaluations (acc_mean);
                # only evaluations carry the objective that Tune's searcher and scheduler need.
                if "acc_mean" in row and "loss" not in row:
                    frac = row["iteration"] / max(1, seed_config.total_iterations)
                    tune.report({**trial_metrics(plan, finished, len(finished) + frac, partial=row["acc_mean"]),
                                 **labels})

            result = run(seed_config, report=report, data=data)
            if not all(math.isfinite(a) for a in result.accuracies):
                raise FloatingPointError(f"seed {seed}: evaluation accuracy is not finite ({result.accuracies})")
            save_run(result, work / seed_dir(index))
            finished.append({"index": index, "seed": seed, "acc": result.acc_mean,
                             "accuracies": list(result.accuracies), "seconds": result.seconds,
                             "distill_seconds": result.distill_seconds, "stored_points": result.stored_points,
                             "stored_floats": result.stored_floats, "dir": seed_dir(index), **labels})
            (work / STATE_FILE).write_text(json.dumps({"params": params, "seeds": list(plan.seeds),
                                                       "finished": finished}, indent=1))
            tune.report({**trial_metrics(plan, finished, float(len(finished))), **labels},
                        checkpoint=tune.Checkpoint.from_directory(str(work)))
            _log_run(plan, finished[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
