"""Running a search: from a validated ``SearchSpace`` to a finished (or resumable) experiment.

``search(space, name=...)`` loads the dataset once, joins or starts a Ray cluster, checks that
the cluster can ever run a trial (a GPU request on a cluster without GPUs would otherwise stay
PENDING forever), and runs Ray Tune:

- searcher: ``OptunaSearch`` (seeded TPE, study in ``<experiment>/optuna.db``, which
  ``optuna-dashboard sqlite:///results/<name>/optuna.db`` opens; ``raystate`` makes it safe to
  resume after a kill; with ``batch``, proposed a batch at a time, so a rerun proposes the same
  trials), Tune's seeded random search, or a grid;
- scheduler: FIFO, or ASHA with seeds as its time unit;
- at most ``concurrency`` trials at once, resources per trial, ``reuse_actors=True``, the
  dataset passed once with ``tune.with_parameters``, one checkpoint kept per trial;
- a trial whose node (or worker process) is lost is retried from its last finished seed, up to
  ``MAX_FAILURES`` times; the trial's own errors are not retried (see ``trainable``).

An experiment lives in ``<storage>/<name>/``. Running the same name again (or ``resume=True``)
restores it with ``Tuner.restore(..., resume_unfinished=True)``: finished trials are kept,
unfinished ones continue from their last finished seed, and the searcher continues from its
saved state, so no trial is lost and none runs twice. ``raystate`` keeps that saved state
whole when the driver is killed while Tune copies it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import yaml

from ..recipe.config import make_config
from ..recipe.run import load_data
from ..core import portable
from ..core.errors import UserError
from .results import (BASE_FILE, SPACE_FILE, STUDY_FILE, list_experiments, load_results, read_base, trial_folder,
                      read_space, storage_dir)
from .space import GPU_TRIALS, SearchSpace
from .util import quiet_loggers

FINISHED = ("done", "stopped", "error")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Tune's own INFO/WARNING lines (snapshot timings, per-trial tracebacks) would drown the
# progress display; every trial error still lands in its trial folder's error.txt.
NOISY_LOGGERS = ("ray.tune", "ray.train", "ray.air", "optuna")
# Retries of a trial whose node or worker died (Tune's FailureConfig.max_failures). Tune cannot
# tell a lost node from the trial's own exception, so after an exception of its own the trainable
# fails again at once and OwnErrorsAreFinal ends the retries: only lost nodes cost real retries.
MAX_FAILURES = 3


@dataclass
class SearchOutcome:
    """What ``search`` returns."""

    experiment: Path
    results: pd.DataFrame  # load_results(experiment)
    total: int  # trials the space asks for
    finished: int  # trials done, stopped or errored
    resumed: bool
    interrupted: bool  # stopped before every trial finished (Ctrl-C): resume to finish it
    budget_spent: bool  # the time budget ended it: final, a rerun does not add trials
    seconds: float


def trial_dirname(trial: Any) -> str:
    """Short trial folder names (Tune's default repeats every hyperparameter)."""
    return trial_folder(trial.trial_id)


# Building the pieces ------------------------------------------------------------------------
def _tune_domains(space: SearchSpace) -> dict[str, Any]:
    """Tune's sampling domains (random search) or grid (grid search) for ``space.params``."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, d in space.params.items():
        if space.search.algorithm == "grid":
            out[key] = tune.grid_search(list(d.choice))
        elif d.kind == "choice":
            out[key] = tune.choice(list(d.choice))
        elif d.kind == "uniform":
            out[key] = tune.uniform(*d.bounds)
        elif d.kind == "loguniform":
            out[key] = tune.loguniform(*d.bounds)
        else:
            low, high = d.bounds
            step = d.step or 1
            # Both ends included, values low + k * step (tune.qrandint rounds to multiples of q).
            out[key] = tune.randint(low, high + 1) if step == 1 else tune.choice(list(range(low, high + 1, step)))
    return out


def study_url(exp_dir: Path) -> str:
    """The optuna storage URL of an experiment's study (what ``optuna-dashboard`` takes)."""
    return f"sqlite:///{(exp_dir / STUDY_FILE).resolve()}"


def _searcher(space: SearchSpace, name: str, exp_dir: Path) -> tuple[Any, dict[str, Any]]:
    """(search algorithm, Tune param_space), each limited here to ``concurrency`` trials at once."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    s = space.search
    if s.algorithm == "optuna":
        import optuna

        from .raystate import ResumableOptunaSearch

        # TPE starts with random samples (NSGA-II with a random generation); with a small budget,
        # start modelling sooner. constant_liar keeps concurrent trials from being suggested the
        # same point. Both samplers handle several objectives (TPE via MOTPE).
        startup = max(2, min(10, space.num_trials // 3))
        if s.sampler == "nsga2":
            sampler = optuna.samplers.NSGAIISampler(seed=space.searcher_seed, population_size=startup)
        else:
            sampler = optuna.samplers.TPESampler(seed=space.searcher_seed, n_startup_trials=startup,
                                                 constant_liar=True)
        storage = optuna.storages.RDBStorage(study_url(exp_dir))
        # Ray passes a list of metrics and modes to Optuna as a multi-objective study.
        metric, mode = (s.metrics, s.modes) if s.multi else ("objective", s.mode)
        searcher = ResumableOptunaSearch(space={key: d.to_optuna() for key, d in space.params.items()}, metric=metric,
                                         mode=mode, sampler=sampler, storage=storage, study_name=name)
        if s.concurrency:
            # With batch, TPE is told of a batch's trials only when all have ended, and asked for
            # the next batch only then: what it proposes no longer depends on which ends first.
            from ray.tune.search import ConcurrencyLimiter

            searcher = ConcurrencyLimiter(searcher, max_concurrent=s.concurrency, batch=s.batch)
        return searcher, {}
    limit = s.concurrency or 0
    if s.algorithm == "random":
        return BasicVariantGenerator(max_concurrent=limit, random_state=space.searcher_seed), _tune_domains(space)
    return BasicVariantGenerator(max_concurrent=limit), _tune_domains(space)


def _scheduler(space: SearchSpace) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = space.search
    if s.scheduler == "fifo":
        return FIFOScheduler()
    # Time is "seeds finished" (fractional at intermediate evaluations): grace_period 1 lets every
    # trial finish its first seed before it can be stopped.
    return ASHAScheduler(time_attr="progress", max_t=s.seeds, grace_period=s.asha.grace_period,
                         reduction_factor=s.asha.reduction_factor)


def _trainable(space: SearchSpace, base: dict[str, Any], data: Any, exp_dir: Path, gpus: float) -> Any:
    from ray import tune

    from .trainable import TrialPlan, train_trial

    r = space.search.resources
    plan = TrialPlan(base=base, seeds=tuple(space.seeds), objective=space.search.accuracy,
                     robust_k=space.search.robust_k, threads=max(1, int(r.cpus)), experiment_dir=str(exp_dir))
    resources = {"cpu": r.cpus, "gpu": gpus}
    return tune.with_resources(tune.with_parameters(train_trial, data=data, plan=plan), resources)


def _new_tuner(space: SearchSpace, name: str, exp_dir: Path, trainable: Any, callbacks: list) -> Any:
    from ray import tune

    s = space.search
    search_alg, param_space = _searcher(space, name, exp_dir)
    # Tune's own metric is one name; a multi-objective search leaves it to the searcher (and ASHA,
    # which needs one, is refused for it by the space).
    tune_config = tune.TuneConfig(
        metric=None if s.multi else "objective", mode=None if s.multi else s.mode, search_alg=search_alg,
        scheduler=_scheduler(space),
        num_samples=1 if s.algorithm == "grid" else space.num_trials,
        max_concurrent_trials=None,  # _searcher limits every search algorithm itself
        time_budget_s=s.time_budget_s, reuse_actors=True,
        trial_dirname_creator=trial_dirname,
    )
    run_config = tune.RunConfig(
        name=name, storage_path=str(exp_dir.parent), verbose=0, callbacks=callbacks,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # the latest holds every finished seed
        # A lost node is retried from the checkpoint; an error of the trial's own stays a result.
        failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
    )
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


# Cluster -------------------------------------------------------------------------------------
WORKER_NICENESS = "RAY_worker_niceness"  # read by the raylet that ray.init starts


def _connect(address: str | None) -> bool:
    """Join ``address`` (or start a local cluster); True when this call started Ray."""
    import ray

    _reachable(address)
    if ray.is_initialized():  # e.g. a notebook or a test session that started Ray itself
        return False
    # Ray starts its workers at niceness 15, under every other process of the machine: on a
    # workstation where anything else runs, the trials (the search's whole work) then starve.
    # A local cluster's workers run at the driver's priority unless the user sets the variable.
    local = address is None and WORKER_NICENESS not in os.environ
    try:
        with _environment(WORKER_NICENESS, "0") if local else contextlib.nullcontext():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                     runtime_env=_portable_env())
    except ConnectionError as exc:
        raise UserError(f"--address {address}: cannot join a Ray cluster there ({str(exc).splitlines()[0]}); start one "
                        "with `ray start --head`, or leave --address out; a cluster with token authentication "
                        "also needs RAY_AUTH_MODE=token and its token (~/.ray/auth_token or RAY_AUTH_TOKEN)") from None
    return True


def _portable_env() -> dict[str, Any] | None:
    """Under ``TUNE_DISTILL_PORTABLE=1``, the same variables for every worker of the search, on
    every node of a cluster (a worker's environment is its raylet's, not the driver's)."""
    if not portable.requested():
        return None
    return {"env_vars": {portable.VARIABLE: "1", **portable.LIBRARIES}}


def _reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail fast on a host:port nobody listens on (Ray itself retries for minutes)."""
    if not address or address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--address {address!r}: expected host:port (e.g. 10.0.0.5:6379) or auto")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(f"--address {address}: nothing answers there ({exc.strerror or exc}); start a cluster "
                        "with `ray start --head`, or leave --address out to start a local one") from None


def trial_gpus(requested: float | None, device: str, cluster_gpus: float) -> float:
    """Each trial's GPU share: the space's (``requested``), else ``1 / GPU_TRIALS`` of a GPU when
    the config may use one (``device`` auto or cuda) and the cluster has GPUs, else 0."""
    if requested is not None:
        return requested
    return 1 / GPU_TRIALS if device != "cpu" and cluster_gpus > 0 else 0.0


def check_resources(space: SearchSpace, trial_gpus: float) -> None:
    """A trial the cluster can never place is an error now, not a trial PENDING forever."""
    import ray

    r = space.search.resources
    have = ray.cluster_resources()
    gpus, cpus = have.get("GPU", 0.0), have.get("CPU", 0.0)
    if trial_gpus > 0 and gpus == 0:
        raise UserError(f"each trial asks for {trial_gpus:g} GPU but the Ray cluster has none; use --gpus-per-trial 0 "
                        "(and device: cpu/auto) or join a cluster with GPUs via --address")
    if trial_gpus > gpus:
        raise UserError(f"each trial asks for {trial_gpus:g} GPUs but the Ray cluster has {gpus:g}; lower --gpus-per-trial")
    if r.cpus > cpus:
        raise UserError(f"each trial asks for {r.cpus:g} CPUs but the Ray cluster has {cpus:g}; lower --cpus-per-trial")


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` for the duration of the block, then as it was."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old



def _first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            found = _first_difference(va, vb, f"{prefix}{key}.")
            if found:
                return found
        elif va != vb:
            return f"{prefix}{key} was {va!r}, now {vb!r}"
    return ""


# The search ----------------------------------------------------------------------------------
def search(space: SearchSpace, *, name: str, storage: str | Path | None = None, data_dir: str | Path | None = None,
           address: str | None = None, resume: bool = False, progress: bool = True,
           mlflow: str | None = None) -> SearchOutcome:
    """Run (or resume) the experiment ``<storage>/<name>`` and return its results.

    Args:
        space: a validated space (``load_space``).
        name: the experiment's name: its folder under ``storage``. An existing experiment of that
            name is resumed, and must have been started with the same space.
        storage: the folder holding experiments (default ``results``), a path or a
            ``file:///abs/path`` URI; on a multi-machine cluster it must be a filesystem every
            node can write (an ``s3://`` URI is a ``UserError``, see ``results.local_path``).
        data_dir: where the dataset files are (else ``$TUNE_DISTILL_DATA``, else the cache).
        address: a Ray cluster to join (``auto``, ``host:port``); default: the running Ray
            of this process, else a new local cluster.
        resume: require an existing experiment (error if there is none).
        progress: print the live progress display.
        mlflow: log every trial as an MLflow run to this tracking URI or folder (``tracking``),
            under an MLflow experiment named ``name``. It applies to the trials a search starts
            with it: a resumed search keeps the callbacks it was started with.

    Raises:
        UserError: a bad name or storage, nothing to resume, a changed space, data that cannot be loaded,
            or resources the cluster does not have; all before any trial starts.
    """
    if not NAME_RE.match(name):
        raise UserError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (starting with a letter or digit)")
    root = storage_dir(storage).resolve()
    exp_dir = root / name
    existing = (exp_dir / SPACE_FILE).is_file()
    if resume and not existing:
        names = list_experiments(root)
        raise UserError(f"--resume: no experiment {name!r} under {root}/; "
                        + (f"existing: {', '.join(names)}" if names else "none exist yet"))
    if existing:
        stored = read_space(exp_dir)
        if stored != space:
            diff = _first_difference(stored.to_dict(), space.to_dict())
            raise UserError(f"experiment {name!r} exists with a different space ({diff}); resume it unchanged, "
                            "or choose another --name")
        base = read_base(exp_dir)
        from .raystate import restore_into

        restore_into(exp_dir)  # a driver killed while Tune copied its state left it cut off
        done = _outcome(space, name, exp_dir, True, 0.0)
        if not done.interrupted:  # nothing left to run: no cluster needed
            if progress:
                print(f"experiment {name!r} is already complete ({exp_dir})", flush=True)
            return done
    else:
        base = space.base_values()
    # Load the data before starting Ray: a missing file is a one-line error, not a failed trial.
    cfg = make_config(base)
    data = load_data(cfg, data_dir)
    tracker = None
    if mlflow is not None:  # a store MLflow cannot use is a one-line error before anything runs
        from .tracking import TrialRuns

        tracker = TrialRuns(mlflow, name, base)

    from ray import tune

    from .raystate import StateBackup
    from .progress import Progress
    from .trainable import OwnErrorsAreFinal

    started_ray = _connect(address)
    try:
        import ray

        gpus = trial_gpus(space.search.resources.gpus, cfg.device, ray.cluster_resources().get("GPU", 0.0))
        check_resources(space, gpus)
        restoring = existing and tune.Tuner.can_restore(str(exp_dir))
        if not existing:
            exp_dir.mkdir(parents=True, exist_ok=True)
            (exp_dir / BASE_FILE).write_text(yaml.safe_dump(base, sort_keys=False))
            # Written last: its presence marks the folder as an experiment.
            (exp_dir / SPACE_FILE).write_text(yaml.safe_dump(space.to_dict(), sort_keys=False))
        trainable = _trainable(space, base, data, exp_dir, gpus)
        callbacks = [StateBackup(), OwnErrorsAreFinal()] + ([tracker] if tracker else [])
        if progress:
            callbacks.append(Progress(space.num_trials, space.search.seeds, space.search.accuracy_mode))
        if progress:
            _announce(space, name, exp_dir, restoring, gpus)
        started = time.perf_counter()
        # Ray's console reporter off during fit() (our Progress callback replaces it): with
        # verbose=0 Tune's default reporter still prints a configuration box and every trial's
        # error with a path inside Ray's temp folder; RAY_AIR_NEW_OUTPUT=0 selects its legacy
        # reporter, which verbose=0 silences.
        with quiet_loggers(NOISY_LOGGERS), _environment("RAY_AIR_NEW_OUTPUT", "0"):
            if restoring:
                tuner = tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True)
            else:
                tuner = _new_tuner(space, name, exp_dir, trainable, callbacks)
            try:
                tuner.fit()
            except RuntimeError as exc:
                # Tune's actor manager gives up on the whole run when Ray's memory monitor kills a
                # reused worker; the experiment's state is saved, so say how to go on.
                if "low on memory" not in str(exc):
                    raise
                raise UserError(f"search {name!r} stopped: Ray killed a trial's worker because the node ran low on "
                                f"memory; finished trials are kept. Free memory or lower concurrency, then resume: "
                                f"tune-distill search --name {name} --resume (with the same --storage and --data-dir)"
                                ) from None
        seconds = time.perf_counter() - started
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return _outcome(space, name, exp_dir, restoring, seconds)


def _outcome(space: SearchSpace, name: str, exp_dir: Path, resumed: bool, seconds: float) -> SearchOutcome:
    results = load_results(exp_dir)
    finished = int(results["status"].isin(FINISHED).sum())
    # Ctrl-C leaves trials unfinished (running/pending) for a resume; the time budget stops the
    # running ones (status stopped) and ends the experiment for good (Tune keeps its clock).
    unfinished = finished < len(results)
    short = finished < space.num_trials
    # No trial at all means the driver died before Tune's first snapshot, not that time ran out.
    budget_spent = short and not unfinished and len(results) > 0 and space.search.time_budget_s is not None
    interrupted = short and not budget_spent
    if not interrupted and (exp_dir / STUDY_FILE).is_file():
        from .raystate import close_orphans

        close_orphans(study_url(exp_dir), name)
    return SearchOutcome(exp_dir, results, space.num_trials, finished, resumed, interrupted, budget_spent, seconds)


def _announce(space: SearchSpace, name: str, exp_dir: Path, restoring: bool, gpus: float) -> None:
    s = space.search
    names = [o if o != "robust" else f"robust (acc_mean - {s.robust_k:g} * acc_std)" for o in s.objectives]
    objective = (f"objectives {', '.join(f'{o} ({m})' for o, m in zip(names, s.modes))}" if s.multi
                 else f"objective {names[0]}")
    if s.algorithm == "optuna" and s.sampler == "nsga2":
        algo = f"optuna NSGA-II (seed {s.seed})"
    else:
        algo = {"optuna": f"optuna TPE (seed {s.seed})", "random": f"random (seed {s.seed})", "grid": "grid"}[s.algorithm]
    conc = f"{s.concurrency} at a time" if s.concurrency else "as many at a time as resources allow"
    conc += " (proposed in batches)" if s.batch else ""
    gpu = f", {gpus:g} GPU" if gpus else ""
    print(f"{'resuming' if restoring else 'search'} {name}: {space.num_trials} trials x {s.seeds} seeds "
          f"{space.seeds}, {algo}, {s.scheduler}, {objective}, {conc}, "
          f"{s.resources.cpus:g} CPU{gpu} per trial", flush=True)
    study = f"; study {study_url(exp_dir)}" if s.algorithm == "optuna" else ""
    print(f"experiment folder {exp_dir}{study}", flush=True)
    if s.time_budget_s:
        print(f"time budget {s.time_budget_s:g} s", flush=True)
    if restoring:
        print("finished trials are kept; unfinished ones continue after their last finished seed", flush=True)
