"""Tune's driver state (trial list, searcher state), kept whole through a killed driver.

Tune writes its state to a staging folder, then a background thread copies it into the
experiment folder file by file, truncating each file before writing it. A driver killed during
that copy (SIGKILL, the OOM killer, a lost machine) leaves an empty or cut-off
``experiment_state-*.json`` or ``searcher-state-*.pkl``, and the experiment can then be neither
read nor resumed. So at every save ``StateBackup`` zips the staging folder's state files, whole
and written together, into ``<experiment>/driver-state.zip`` (written aside, then renamed over
the old one, so the zip itself is never partial). The zip is as new as the copy or newer:

- ``experiment_state_file`` is the state that readers (``load_results``) use;
- ``restore_into`` puts the zip's files back before ``Tuner.restore`` reads the folder.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from ray.tune import Callback

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
            storage = trials[0].storage
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
