"""Reading experiments back: ``load_results(name) -> pandas.DataFrame``, one row per trial.

An experiment folder (``results/<name>/`` by default) holds Tune's own files (experiment state,
searcher state, one ``trial_<id>/`` folder per trial with its latest checkpoint), a whole copy
of Tune's state (``driver-state.zip``, see ``raystate``), our
``space.yaml`` (the validated space, CLI overrides applied) and ``base_config.yaml`` (the
resolved config every trial starts from), and, for algorithm optuna, ``optuna.db`` (the study).

The DataFrame's columns, in order:

=================  ===========================================================================
``trial``          1, 2, ... in the order Tune created the trials
``trial_id``       Tune's trial id
``status``         ``done`` (every seed ran), ``stopped`` (the scheduler stopped it early),
                   ``error``, ``running`` / ``pending`` (a live or interrupted search)
*hyperparameters*  one column per searched key of ``params``, named by the key, or
                   ``config/<key>`` for a key that is also a column below
``seeds_done``     seeds finished
``acc_seed<i>``    accuracy of the i-th seed (mean over its evaluation models); NaN if not run
``acc_mean``       mean over finished seeds; ``acc_std`` their (population) std; ``acc_min``
``objective``      the space's accuracy objective (acc_mean, robust or acc_min) over finished seeds
``pareto``         True for a finished trial no other finished trial dominates in every objective
                   of the space (``objective`` and its costs; with one objective: the best trials)
``best_seed``      the seed whose synthetic set scored best
``seconds``        wall-clock seconds of the finished seeds' runs
``distill_seconds``  mean distillation seconds of a finished seed
``stored_points``  points the synthetic set stores per class (ipc x points);
``stored_floats``  floats it stores per class (3 per point)
``node``           where the finished seeds ran: ``<node ip>/<first 8 hex digits of the Ray
                   node id>``, several comma-separated when a lost node moved the trial
``split``          where accuracies were measured: ``test`` or ``val``
``synthetic``      path of the best seed's ``synthetic.npz``
``error``          the exception line of an errored trial
``trial_dir``      the trial's folder
``config/<key>``   with ``config=True`` only, last: every key of the trial's full config (the
                   experiment's base config, then the trial's params), e.g. ``config/pooling``
                   for a key the space fixes, as in Ray Tune's own DataFrames
=================  ===========================================================================

Reading needs no running Ray cluster (Ray's ``ExperimentAnalysis`` only parses files).

``storage`` is a folder, or a ``file:///abs/path`` URI as Ray Tune takes it (``storage_dir``).
Object-store URIs (``s3://``, ``gs://``) are refused with one line: the search keeps its Optuna
study in SQLite and reads trial folders back with plain file operations, so every node needs the
experiments as a filesystem (NFS, or a bucket mounted as one).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import yaml

from ..core.errors import UserError
from ..recipe.config import Config
from .objective import costs, metric_name, pareto_mask, summarize
from .space import SearchSpace, space_from_dict

DEFAULT_STORAGE = "results"
SPACE_FILE = "space.yaml"
BASE_FILE = "base_config.yaml"
STUDY_FILE = "optuna.db"


def trial_folder(trial_id: str) -> str:
    """A trial's folder in its experiment (set by the Tuner, read by the trainable and here)."""
    return f"trial_{trial_id}"


STATE_FILE = "trial.json"  # written by the trainable into every checkpoint

CONFIG_PREFIX = "config/"  # the full config's columns (load_results(config=True)), as in Ray Tune's DataFrames
FIXED_COLUMNS = ["trial", "trial_id", "status"]
SUMMARY_COLUMNS = ["seeds_done", "acc_mean", "acc_std", "acc_min", "objective", "pareto", "best_seed", "seconds",
                   "distill_seconds", "stored_points", "stored_floats", "node", "split", "synthetic", "error",
                   "trial_dir"]
URI_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def param_column(key: str) -> str:
    """The results column of the searched config key ``key``.

    The key itself, unless a result column already has that name (a config key named like
    ``objective`` or ``split`` must not shadow the search's own column).
    """
    return f"{CONFIG_PREFIX}{key}" if key in FIXED_COLUMNS or key in SUMMARY_COLUMNS else key


def config_columns(df: pd.DataFrame) -> list[str]:
    """The full config's columns of ``df`` (``load_results(config=True)``), in order."""
    return list(df.attrs.get("config", []))


def column_list(df: pd.DataFrame) -> str:
    """``df``'s columns for an error message, the many ``config/<key>`` ones in a few words."""
    config = set(config_columns(df))
    names = [str(c) for c in df.columns if c not in config]
    return ", ".join(names) + (f", and {CONFIG_PREFIX}<key> for every config key" if config else "")


# Finding experiments ---------------------------------------------------------------------
def local_path(location: str | os.PathLike, what: str = "--storage") -> Path:
    """The local folder that ``location`` names: a path as it is, or a ``file://`` URI.

    Ray Tune takes ``storage_path`` as a URI too (pyarrow filesystems); ``file:///abs/path`` is
    a local folder under another name. Other schemes (``s3://``, ``gs://``) are a one-line
    ``UserError``: the search's own files (``optuna.db``, ``space.yaml``, the trial folders read
    back by ``load_results`` and by a resumed trial) need a filesystem.
    """
    text = os.fspath(location)
    match = URI_RE.match(text)
    if not match:
        return Path(text)
    scheme = match.group(1).lower()
    if scheme == "file":
        parsed = urlparse(text)
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise UserError(f"{what} {text}: a file:// URI names an absolute local path, file:///abs/path "
                            "(three slashes)")
        return Path(unquote(parsed.path))
    raise UserError(f"{what} {text}: {scheme}:// storage is not supported (the search keeps its Optuna study in "
                    "SQLite and reads trial folders as files); give a folder every node can reach, e.g. an NFS "
                    "mount or the bucket mounted as a filesystem, as a path or file:///abs/path")


def storage_dir(storage: str | os.PathLike | None) -> Path:
    """The local folder holding experiments: ``storage`` (a path or ``file://`` URI), default ``results``."""
    return local_path(storage if storage is not None else DEFAULT_STORAGE)


def list_experiments(storage: str | os.PathLike | None = None) -> list[str]:
    """Names of the experiments under ``storage`` (folders holding a ``space.yaml``)."""
    root = storage_dir(storage)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / SPACE_FILE).is_file())


def experiment_dir(name_or_path: str | os.PathLike, storage: str | os.PathLike | None = None) -> Path:
    """The folder of an experiment given by name (under ``storage``) or by path.

    Raises ``UserError`` listing the experiments that exist when there is no such experiment.
    """
    as_path = local_path(name_or_path, "experiment")
    if (as_path / SPACE_FILE).is_file():
        return as_path.resolve()  # absolute: paths in the results stay valid from any directory
    candidate = storage_dir(storage) / str(name_or_path)
    if (candidate / SPACE_FILE).is_file():
        return candidate.resolve()
    existing = list_experiments(storage)
    where = storage_dir(storage)
    listed = f"existing: {', '.join(existing)}" if existing else "none exist yet (start one with tune-distill search SPACE.yaml)"
    raise UserError(f"no experiment {str(name_or_path)!r} under {where}/; {listed}")


def read_space(exp_dir: Path) -> SearchSpace:
    """The validated space an experiment was started with."""
    return space_from_dict(yaml.safe_load((exp_dir / SPACE_FILE).read_text()) or {})


def read_base(exp_dir: Path) -> dict[str, Any]:
    return yaml.safe_load((exp_dir / BASE_FILE).read_text())


def error_line(text: str) -> str:
    """The exception line (``Type: message``) of a Ray error file or a traceback."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    # Ray's memory monitor writes no exception line, and its report ends with a process table.
    oom = next((ln for ln in lines if "running low on memory" in ln), None)
    if oom is not None:
        usage = re.search(r"was ([\d.]+GB used / [\d.]+GB limit)", oom)
        return ("OutOfMemoryError: Ray killed the trial's worker, the node running low on memory"
                + (f" ({usage.group(1)})" if usage else ""))
    for ln in reversed(lines):
        head = ln.split(":", 1)[0]
        if head and " " not in head and ":" in ln and (head.endswith(("Error", "Exception", "Interrupt")) or "." in head):
            return ln
    return lines[-1] if lines else "unknown error"


# Reading trials ----------------------------------------------------------------------------
def latest_state(trial_dir: Path) -> tuple[Path | None, dict]:
    """(checkpoint folder, its ``trial.json``) of a trial's newest readable checkpoint."""
    for ckpt in sorted(trial_dir.glob("checkpoint_*"), reverse=True):
        try:
            return ckpt, json.loads((ckpt / STATE_FILE).read_text())
        except (OSError, ValueError):
            continue
    return None, {}


def creation_order(trials: list) -> list:
    """Tune trials sorted by creation: their ``experiment_tag`` starts with Tune's counter."""
    def counter(t: Any) -> int:
        head = str(getattr(t, "experiment_tag", "")).split("_", 1)[0]
        return int(head) if head.isdigit() else 1 << 30

    return sorted(trials, key=counter)


def _tune_trials(exp_dir: Path) -> list[tuple[str, str, dict]]:
    """(trial_id, Tune status, params) of every trial in Tune's experiment state, oldest first."""
    import tempfile
    import warnings

    from ray.tune import ExperimentAnalysis

    from .raystate import experiment_state_file
    from .util import quiet_loggers

    with tempfile.TemporaryDirectory() as scratch:
        try:
            state = experiment_state_file(exp_dir, Path(scratch))
            if state is None:
                return []
            # Quiet: Ray warns about every trial that has no result yet (pending, errored at start).
            with warnings.catch_warnings(), quiet_loggers(("ray.tune",)):
                warnings.simplefilter("ignore")
                analysis = ExperimentAnalysis(str(state.resolve()))
        except Exception as exc:  # Ray's own reading failed: say where, in one line
            raise UserError(f"cannot read the experiment state in {exp_dir} ({type(exc).__name__}: {exc}); if its "
                            "driver was killed before Tune's first save, start the search again under another "
                            "--name") from None
    return [(t.trial_id, t.status, dict(t.config)) for t in creation_order(analysis.trials)]


def node_label(finished: list[dict]) -> str | None:
    """The nodes a trial's finished seeds ran on, in seed order, each once (None before any,
    and for seeds finished before the trainable recorded nodes)."""
    nodes = [f["node"] for f in finished if f.get("node")]
    return ", ".join(dict.fromkeys(nodes)) or None


def _status(tune_status: str, seeds_done: int, seeds: int) -> str:
    if tune_status == "TERMINATED":
        return "done" if seeds_done >= seeds else "stopped"
    if tune_status == "ERROR":
        return "error"
    return "running" if tune_status == "RUNNING" else "pending"


def load_results(name_or_path: str | os.PathLike, storage: str | os.PathLike | None = None,
                 config: bool = False) -> pd.DataFrame:
    """One row per trial of an experiment (columns in this module's docstring).

    Args:
        name_or_path: an experiment name (looked up under ``storage``) or an experiment folder.
        storage: the folder holding experiments; default ``results`` (relative to the current
            directory), as for ``tune-distill search``.
        config: also a ``config/<key>`` column for every key of each trial's full config (the
            base config, then its params), after the other columns.

    Returns:
        A DataFrame ordered by trial number; ``df.attrs`` holds ``experiment`` (the folder),
        ``space`` (the space as a mapping), ``params`` (the hyperparameter columns, in the
        order of the space's keys), ``config`` (the ``config/<key>`` columns; empty unless
        ``config``), ``objectives`` (the columns of the space's objectives with their modes,
        ``[(column, mode), ...]``) and ``mode`` (the accuracy objective's).

    Raises:
        UserError: no such experiment (the message lists those that exist).
    """
    exp_dir = experiment_dir(name_or_path, storage)
    space = read_space(exp_dir)
    params = list(space.params)
    n_seeds = space.search.seeds
    base = read_base(exp_dir) if (exp_dir / BASE_FILE).is_file() else space.base_values()
    split = base.get("eval_split", "test")
    param_columns = [param_column(p) for p in params]
    keys = set(base) | set(params)  # in the Config's field order, then any other (an older key) by name
    keys = [k for k in Config.model_fields if k in keys] + sorted(keys - set(Config.model_fields))
    # A searched key that collides with a result column is already config/<key>: not twice.
    config_keys = [k for k in keys if f"{CONFIG_PREFIX}{k}" not in param_columns] if config else []
    rows = []
    for number, (trial_id, tune_status, trial_params) in enumerate(_tune_trials(exp_dir), start=1):
        trial_dir = exp_dir / trial_folder(trial_id)
        ckpt, state = latest_state(trial_dir)
        finished = state.get("finished", [])
        summary = summarize([f["acc"] for f in finished], space.search.accuracy, space.search.robust_k)
        row: dict[str, Any] = {"trial": number, "trial_id": trial_id,
                               "status": _status(tune_status, len(finished), n_seeds)}
        row.update({param_column(p): trial_params.get(p) for p in params})
        row["seeds_done"] = len(finished)
        by_index = {f["index"]: f["acc"] for f in finished}
        row.update({f"acc_seed{i}": by_index.get(i, math.nan) for i in range(n_seeds)})
        row.update(summary)
        best = max(finished, key=lambda f: f["acc"]) if finished else None
        row["best_seed"] = best["seed"] if best else None
        row["seconds"] = float(sum(f["seconds"] for f in finished))
        row.update(costs(finished))
        row["node"] = node_label(finished)
        row["split"] = split
        row["synthetic"] = str(ckpt / best["dir"] / "synthetic.npz") if best and ckpt else None
        error_file = trial_dir / "error.txt"
        row["error"] = error_line(error_file.read_text()) if tune_status == "ERROR" and error_file.is_file() else None
        row["trial_dir"] = str(trial_dir)
        trial_config = {**base, **trial_params}  # as the trainable builds it
        row.update({f"{CONFIG_PREFIX}{k}": trial_config.get(k) for k in config_keys})
        rows.append(row)
    config_cols = [f"{CONFIG_PREFIX}{k}" for k in config_keys]
    columns = (FIXED_COLUMNS + param_columns + ["seeds_done"] + [f"acc_seed{i}" for i in range(n_seeds)]
               + SUMMARY_COLUMNS[1:] + config_cols)
    df = pd.DataFrame(rows, columns=columns)
    df = df.sort_values("trial", kind="stable").reset_index(drop=True)
    objectives = [(metric_name(o), m) for o, m in zip(space.search.objectives, space.search.modes)]
    done = (df["status"] == "done").to_numpy()
    values = df[[c for c, _ in objectives]].to_numpy(dtype=float)
    front = np.zeros(len(df), dtype=bool)
    front[done] = pareto_mask(values[done], [m for _, m in objectives])
    df["pareto"] = front
    df.attrs.update(experiment=str(exp_dir), space=space.to_dict(), params=param_columns, config=config_cols,
                    objectives=objectives, mode=space.search.accuracy_mode)
    return df


def pareto_trials(df: pd.DataFrame) -> pd.DataFrame:
    """The trials on the front (``pareto``), along it: by the first cost objective, cheapest first
    (with one objective: the best trials, in trial order)."""
    front = df[df["pareto"].astype(bool)]
    costs_ = [(c, m) for c, m in df.attrs.get("objectives", []) if c != "objective"]
    if costs_:
        column, mode = costs_[0]
        front = front.sort_values([column, "trial"], ascending=[mode == "min", True], kind="stable")
    return front


def rank_key(seeds_done: int, objective: float, sign: float) -> tuple[int, float]:
    """How trials rank, the larger the better (``sign``: +1 for mode max, -1 for min).

    Trials that finished more seeds rank first, then by objective. A trial the scheduler stopped
    after fewer seeds lost to those that went on at that many seeds (ASHA compares trials at
    equal seed counts), and its objective is not comparable with theirs: over one seed the std
    is 0, so ``robust`` and ``acc_min`` are just that seed's accuracy.
    """
    return int(seeds_done), sign * float(objective)


def leaderboard(df: pd.DataFrame, top: int | None = None) -> pd.DataFrame:
    """Trials with an objective, best first (``rank_key``), optionally the first ``top``."""
    sign = 1.0 if df.attrs.get("mode", "max") == "max" else -1.0
    scored = df[df["objective"].notna()]
    # sorted() is stable with reverse=True: equal trials keep their trial order.
    order = sorted(scored.index, key=lambda i: rank_key(scored.at[i, "seeds_done"], scored.at[i, "objective"], sign),
                   reverse=True)
    ranked = scored.loc[order]
    return ranked.head(top) if top else ranked


def group_objective(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean, std and count of the objective per group of ``by`` (trials with an objective only)."""
    missing = [c for c in by if c not in df.columns]
    if missing:
        raise UserError(f"--group-by: no column {missing[0]!r}; columns: {column_list(df)}")
    scored = df[df["objective"].notna()]
    grouped = scored.groupby(by, dropna=False)["objective"].agg(["mean", "std", "count"]).reset_index()
    mode = df.attrs.get("mode", "max")
    return grouped.sort_values("mean", ascending=(mode == "min"), kind="stable").reset_index(drop=True)


def filter_rows(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """``df.query(where)`` with a one-line error for a bad expression.

    A column named ``config/<key>`` may be written bare (``config/pooling == 'avg'``): it is
    back-quoted for pandas, which reads ``/`` as division.
    """
    bare = re.compile(r"(?<![`\w'\"])config/(\w+)")
    for key in bare.findall(where):
        if f"{CONFIG_PREFIX}{key}" not in df.columns:
            raise UserError(f"--where {where!r}: no column 'config/{key}'; columns: {column_list(df)}")
    quoted = bare.sub(r"`config/\1`", where)
    try:
        out = df.query(quoted)
    except Exception as exc:
        raise UserError(f"--where {where!r}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
                        f"columns: {column_list(df)}") from None
    out.attrs.update(df.attrs)
    return out


def to_markdown(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A GitHub-flavoured markdown table (pandas' own needs the optional ``tabulate``)."""
    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v).replace("|", "\\|")

    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])
