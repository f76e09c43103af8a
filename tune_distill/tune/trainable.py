"""The function trainable: one trial = one config run over the experiment's seeds.

For each seed it calls ``run()`` (which knows nothing of Ray), writes the seed's run folder
(``synthetic.npz``, ``synthetic.png``, ``metrics.json``, ``history.csv``, ``config.yaml``) into
the trial's working folder, and reports to Tune with that folder as the checkpoint. Reports
happen after every seed and at every intermediate evaluation (``eval_at``), each carrying the
objective over what is known so far, so ASHA can stop a bad trial after its first seed or its
early iterations. ``progress`` (seeds finished, fractional during a seed) is ASHA's time axis.

The checkpoint holds every finished seed, so a trial restored after an interruption skips the
seeds it already finished and never runs one twice. The dataset arrives once per worker via
``tune.with_parameters``; the trial's torch threads match its CPU share.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray import tune

from ..recipe.artifacts import save_run
from ..recipe.config import make_config
from ..data import Dataset
from ..recipe.run import run
from .objective import summarize

STATE_FILE = "trial.json"  # in every checkpoint: the finished seeds
RUNS_LOG = "seed_runs.jsonl"  # in the trial folder: one line per seed run that finished


@dataclass(frozen=True)
class TrialPlan:
    """What every trial of an experiment shares (fixed when the experiment starts)."""

    base: dict[str, Any]  # the full resolved base config (preset + base.set)
    seeds: tuple[int, ...]
    objective: str
    robust_k: float
    threads: int  # torch threads per trial: its CPU share, at least 1
    experiment_dir: str | None = None  # where trial folders live (trial_<id>/checkpoint_*)


def seed_dir(index: int) -> str:
    return f"seed_{index}"


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
    if finished:
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
    if plan.experiment_dir is not None:
        trial_dir = Path(plan.experiment_dir) / f"trial_{tune.get_context().get_trial_id()}"
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
    if plan.experiment_dir is None:
        return
    path = Path(plan.experiment_dir) / f"trial_{tune.get_context().get_trial_id()}" / RUNS_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {k: record[k] for k in ("index", "seed", "acc", "seconds")}
    entry.update(finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"), host=socket.gethostname(), pid=os.getpid())
    with path.open("a") as f:
        f.write(json.dumps(entry) + "\n")


def train_trial(params: dict[str, Any], data: Dataset, plan: TrialPlan) -> None:
    """Tune's function trainable. ``params`` are the sampled hyperparameters of this trial."""
    torch.set_num_threads(plan.threads)
    # Validated once here, at the trial's boundary: a combination the config rejects (cross-key
    # rules the space could not check value by value) makes this trial error with that message.
    config = make_config({**plan.base, **params})
    work = Path(tempfile.mkdtemp(prefix="tune_distill_trial_"))
    try:
        finished = _restore(work, plan)
        done = {f["index"] for f in finished}
        if len(done) == len(plan.seeds):  # restored after its last seed: report the final state again
            tune.report(trial_metrics(plan, finished, float(len(finished))))
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
                    tune.report(trial_metrics(plan, finished, len(finished) + frac, partial=row["acc_mean"]))

            result = run(seed_config, report=report, data=data)
            if not all(math.isfinite(a) for a in result.accuracies):
                raise FloatingPointError(f"seed {seed}: evaluation accuracy is not finite ({result.accuracies})")
            save_run(result, work / seed_dir(index))
            finished.append({"index": index, "seed": seed, "acc": result.acc_mean,
                             "accuracies": list(result.accuracies), "seconds": result.seconds,
                             "dir": seed_dir(index)})
            (work / STATE_FILE).write_text(json.dumps({"params": params, "seeds": list(plan.seeds),
                                                       "finished": finished}, indent=1))
            tune.report(trial_metrics(plan, finished, float(len(finished))),
                        checkpoint=tune.Checkpoint.from_directory(str(work)))
            _log_run(plan, finished[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
