"""Experiment tracking: every trial of a search as one MLflow run, through Ray Tune's own callback.

``--mlflow URI`` adds Ray Tune's ``MLflowLoggerCallback`` to the search. MLflow groups the runs
under an MLflow experiment named like the search; each trial's run holds

- params: the trial's full config (the experiment's base config, then its sampled params);
- metrics: everything the trial reports, per report (``acc_seed<i>`` per seed, ``acc_mean``,
  ``objective``, ``stored_points``, ``stored_floats``, ``distill_seconds``, ...);
- artifacts: when the trial ends, its latest checkpoint: one ``seed_<i>/`` folder per seed with
  the synthetic set (``synthetic.npz``), its picture (``synthetic.png``), ``metrics.json``,
  ``config.yaml`` and ``history.csv``.

``URI`` is a tracking server (``http://host:5000``), any URI MLflow takes (``sqlite:///...``,
``databricks``), or a folder: MLflow's recommended local store, ``<folder>/mlflow.db`` with the
artifacts under ``<folder>/artifacts/`` (MLflow 3 refuses its older plain-folder store unless
``MLFLOW_ALLOW_FILE_STORE`` is set, and says to use a database). The experiment is created or
checked before the search starts, so a wrong URI is a one-line error, not a failed search.

Imported only when ``--mlflow`` is given: it imports MLflow and Ray.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback

from ..core.errors import UserError
from .results import latest_state

SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
STORE_FILE = "mlflow.db"
ARTIFACTS = "artifacts"


def tracking_uri(uri: str) -> tuple[str, str | None]:
    """(the tracking URI MLflow is given, the artifact location of a new experiment or None).

    A folder becomes ``sqlite:///<folder>/mlflow.db`` with artifacts in ``<folder>/artifacts``.
    """
    if SCHEME_RE.match(uri) and not re.match(r"^[A-Za-z]:[\\/]", uri):  # a scheme, not a Windows drive
        return uri, None
    folder = Path(uri).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / STORE_FILE}", (folder / ARTIFACTS).as_uri()


def prepare(uri: str, experiment: str) -> str:
    """Create (or find) the MLflow experiment ``experiment`` at ``uri``; returns the tracking URI.

    Raises ``UserError`` (one line) when MLflow is missing or the store cannot be reached.
    """
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UserError("--mlflow needs MLflow: pip install 'tune-distill[mlflow]' (or mlflow-skinny)") from None
    resolved, artifacts = tracking_uri(uri)
    try:
        client = MlflowClient(tracking_uri=resolved)
        if client.get_experiment_by_name(experiment) is None:
            client.create_experiment(experiment, artifact_location=artifacts)
    except Exception as exc:  # MLflow raises many kinds (connection, store, permission): say it in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--mlflow {uri}: MLflow cannot use it ({first[:300]}); give a folder, a tracking server "
                        "(http://host:5000) or sqlite:///path/mlflow.db") from None
    return resolved


class TrialRuns(MLflowLoggerCallback):
    """Ray Tune's ``MLflowLoggerCallback``, also logging the base config and the trial's seed folders.

    Tune's callback logs ``trial.config``, which holds only the sampled params, and as artifacts
    the driver's staging folder (Tune's own logs); the synthetic sets live in the trial's
    checkpoint on the experiment's storage.
    """

    def __init__(self, uri: str, experiment: str, base: dict[str, Any]) -> None:
        super().__init__(tracking_uri=prepare(uri, experiment), experiment_name=experiment,
                         tags={"tune_distill.experiment": experiment})
        self.base = base

    def log_trial_start(self, trial: Any) -> None:
        super().log_trial_start(trial)
        fixed = {k: v for k, v in self.base.items() if k not in trial.config}
        self.mlflow_util.log_params(run_id=self._trial_runs[trial], params_to_log=fixed)

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        checkpoint, _ = latest_state(Path(trial.path)) if trial.path else (None, {})
        if checkpoint is not None:
            self.mlflow_util.save_artifacts(run_id=self._trial_runs[trial], dir=str(checkpoint))
        super().log_trial_end(trial, failed)
