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

from optuna.exceptions import UpdateFinishedTrialError
from ray.tune.search.optuna import OptunaSearch


class ResumableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that ignores results for trials its study already finished."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # The completion that follows needs nothing here: ``OptunaSearch`` already catches the
        # refused ``tell`` of a finished trial (a warning our quiet loggers hide).
        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            pass
