"""Ray's ``OptunaSearch``, made safe to resume after the driver was killed.

The study (``optuna.db``) and Tune's experiment snapshot are saved at different moments. A
driver killed after the study recorded a trial's end but before Tune's next snapshot leaves a
trial that Tune restores as unfinished. The trainable finds all its seeds done and reports its
final state again (no seed runs twice), ``OptunaSearch`` passes that report into a trial the
study has already closed, Optuna raises ``UpdateFinishedTrialError``, and the resumed search
dies. The study already holds the trial's value, so such reports are dropped instead.

Imported only when a search runs: it imports Ray.
"""

from __future__ import annotations

from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from ray.tune.search.optuna import OptunaSearch


class ResumableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that ignores results for trials its study already finished."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._closed_by_study: set[str] = set()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._closed_by_study:
            return
        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            self._closed_by_study.add(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        # Telling a closed trial again would only log a warning; the study's value stands.
        if trial_id not in self._closed_by_study:
            super().on_trial_complete(trial_id, result, error)
