"""The Ray and Optuna internals that tune/raystate.py relies on, checked against the installed
releases: an upgrade that moves one fails here, naming what to re-check, before a search loses
its state. (The behaviour itself is exercised by tests/test_tune_search.py and test_cluster.py.)"""

from __future__ import annotations

import inspect
import time

import optuna
import ray
from ray.train._internal.storage import StorageContext
from ray.tune.callback import CallbackList
from ray.tune.execution.tune_controller import TuneController
from ray.tune.search.optuna import OptunaSearch

from tune_distill.tune import raystate


def test_ray_is_the_release_raystate_was_checked_against():
    assert ray.__version__ == raystate.TESTED_RAY, (
        f"Ray {ray.__version__} is installed; re-check every internal named in tune_distill/tune/raystate.py "
        f"against it (this file lists them), then set TESTED_RAY")


def test_tune_saves_its_state_then_asks_callbacks_for_theirs_in_the_staging_folder():
    # StateBackup zips the staging folder from Callback.get_state: it must run after Tune wrote
    # the experiment and searcher state there, and the trials must know both folders.
    save = inspect.getsource(TuneController.save_to_dir)
    assert save.index("experiment_state_file_name") < save.index("_search_alg.save_to_dir") \
        < save.index("_callbacks.save_to_dir")
    assert "self.get_state()" in inspect.getsource(CallbackList.save_to_dir)
    assert {"experiment_driver_staging_path", "experiment_fs_path"} <= set(dir(StorageContext))
    assert TuneController.CKPT_FILE_TMPL.format("*") == raystate.STATE_GLOB


def test_orphaned_study_trials_are_failed_where_optunas_heartbeat_would_not(tmp_path):
    assert "on_trial_result" in OptunaSearch.__dict__  # the method ResumableOptunaSearch wraps
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage, study_name="s")
    orphan, done = study.ask(), study.ask()  # ask/tell, as OptunaSearch drives the study
    study.tell(done, 1.0)
    time.sleep(1.5)
    optuna.storages.fail_stale_trials(study)  # Optuna's own handling: no heartbeat, so not stale
    assert orphan.number == 0 and study.get_trials()[0].state == optuna.trial.TrialState.RUNNING
    raystate.close_orphans(url, "s")
    raystate.close_orphans(url, "no such study")  # nothing to close
    states = [t.state for t in optuna.load_study(study_name="s", storage=url).get_trials()]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
