"""Every Ray Tune and Optuna internal the search relies on, in one module, pinned to the versions
``tests/test_raystate.py`` checks (Ray ``TESTED_RAY``): upgrading Ray means re-checking this
file only. Imported only when a search runs or its results are read: it imports Ray.

Driver state. Tune writes its state to a staging folder, then a background thread copies it
into the experiment folder file by file, truncating each file before writing it. A driver killed
during that copy (SIGKILL, the OOM killer, a lost machine) leaves an empty or cut-off
``experiment_state-*.json`` or ``searcher-state-*.pkl``, and the experiment can then be neither
read nor resumed. So at every save ``StateBackup`` zips the staging folder's state files, whole
and written together, into ``<experiment>/driver-state.zip`` (written aside, then renamed over
the old one, so the zip itself is never partial). The zip is as new as the copy or newer:
``experiment_state_file`` is the state that readers (``load_results``) use; ``restore_into``
puts the zip's files back before ``Tuner.restore`` reads the folder.

Trial state. The study (``optuna.db``) and Tune's snapshot are saved at different moments. A
driver killed after the study recorded a trial's end but before Tune's next snapshot leaves a
trial that Tune restores as unfinished: its trainable reports its final state again, and
``OptunaSearch`` passes that report into a closed study trial, which Optuna refuses
(``UpdateFinishedTrialError``); ``ResumableOptunaSearch`` drops such reports, as the study
already holds the value.

Orphaned study trials. A driver killed between a suggestion and Tune's next snapshot leaves an
Optuna trial no Tune trial owns; ``close_orphans`` marks them failed once every Tune trial is
over. Optuna's own stale-trial handling (``RDBStorage(heartbeat_interval=...)`` with
``fail_stale_trials``) does not do this job: it only fails trials that recorded a heartbeat,
which ``Study.optimize`` does and the ask/tell that ``OptunaSearch`` uses does not (Optuna 5.1
skips RUNNING trials without one), and it waits out a grace period where a resumed search knows
at once that no Tune trial will finish them.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

TESTED_RAY = "2.60.0"  # the Ray release whose internals this module was checked against
BACKUP_FILE = "driver-state.zip"
STATE_GLOB = "experiment_state-*.json"


def _state_files(folder: Path) -> list[Path]:
    # What Tune itself restores from an experiment folder: its top-level json and pkl files.
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".json", ".pkl")
                  and not p.name.startswith((".", "tmp-")))


def _write_atomically(path: Path, write: Any) -> None:
    """``write(tmp_path)``, then rename over ``path``: readers see the old file or the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def backup(staging: Path, exp_dir: Path) -> None:
    """Zip ``staging``'s state files into ``exp_dir/driver-state.zip``."""
    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for f in _state_files(staging):
                z.write(f, f.name)

    _write_atomically(exp_dir / BACKUP_FILE, write)


def experiment_state_file(exp_dir: Path, scratch: Path) -> Path | None:
    """The newest whole ``experiment_state-*.json`` of ``exp_dir``: from its zip (extracted
    into ``scratch``) if it has one, else the folder's own; None before Tune's first save."""
    zipped = exp_dir / BACKUP_FILE
    if zipped.is_file():
        with zipfile.ZipFile(zipped) as z:
            names = sorted(n for n in z.namelist() if Path(n).match(STATE_GLOB))
            if names:
                return Path(z.extract(names[-1], scratch))
    found = sorted(exp_dir.glob(STATE_GLOB))
    return found[-1] if found else None


def restore_into(exp_dir: Path) -> None:
    """Write the zip's files over those of ``exp_dir`` that differ."""
    zipped = exp_dir / BACKUP_FILE
    if not zipped.is_file():
        return
    with zipfile.ZipFile(zipped) as z:
        for name in z.namelist():
            data, target = z.read(name), exp_dir / name
            if not target.is_file() or target.read_bytes() != data:
                _write_atomically(target, lambda tmp: Path(tmp).write_bytes(data))


class StateBackup(Callback):
    """Tune callback: after every save of Tune's state, zip it into the experiment folder.

    ``get_state`` is the hook: Tune calls it right after it has written the experiment state and
    the searcher state to the staging folder, and before it starts copying them. It returns None,
    so Tune stores nothing for this callback. It holds no paths of its own (it is pickled into
    the experiment, which may be moved): the trials name both folders.
    """

    def __init__(self) -> None:
        self._folders: tuple[Path, Path] | None = None

    def _learn_folders(self, trials: list) -> None:
        if trials and self._folders is None:
            storage = trials[0].storage  # Ray's StorageContext: not public API
            self._folders = (Path(storage.experiment_driver_staging_path), Path(storage.experiment_fs_path))

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        self._learn_folders(trials)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._learn_folders(trials)

    def get_state(self) -> dict | None:
        if self._folders is not None:
            backup(*self._folders)
        return None

    def __getstate__(self) -> dict:
        return {"_folders": None}  # folders belong to one driver session


class ResumableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that ignores results for trials its study already finished."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # The completion that follows needs nothing here: ``OptunaSearch`` already catches the
        # refused ``tell`` of a finished trial (a warning our quiet loggers hide).
        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            pass


def close_orphans(study_url: str, name: str) -> None:
    """Mark the study ``name``'s trials still RUNNING as FAIL (call it once every Tune trial is over)."""
    import optuna
    from optuna.trial import TrialState

    storage = optuna.storages.RDBStorage(study_url)
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return
    for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
