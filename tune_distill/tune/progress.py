"""The live progress display of a search: one line per event, and a status line now and then.

Ray's own reporter prints wide tables of every metric; a user of ``tune-distill search`` wants
to see which trial started with which hyperparameters, each finished seed, each finished or
failed trial, and the best so far::

      0:12  #1 start   depth=3 pooling=avg lr=0.0512
      0:40  #1 seed 1/2   acc 71.20 %
      1:05  #1 done    objective 70.10   acc 70.30 ± 0.50 % over 2 seeds   (best: #1 70.10)
      1:20  #4 ERROR   UserError: device=cuda but no CUDA device is visible; ...
    ─ 1:30  3/8 done · 2 running · 1 errored · best #1 70.10

The callback is pickled into the experiment (Tune keeps its run config), so it holds only plain
values and writes to ``sys.stdout`` at call time.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from ray.tune import Callback

from .results import creation_order, error_line, rank_key

STATUS_EVERY_S = 30.0


def format_params(params: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k}={fmt(v)}" for k, v in params.items())


class Progress(Callback):
    """Tune callback printing the search's progress (see the module docstring)."""

    def __init__(self, total: int, seeds: int, mode: str = "max") -> None:
        self.total = total
        self.seeds = seeds
        self.sign = 1.0 if mode == "max" else -1.0
        self.started = time.monotonic()
        self.last_status = self.started
        self.seen_seeds: dict[str, int] = {}

    @staticmethod
    def number(trials: list, trial: Any) -> int:
        """Trials are numbered 1, 2, ... in creation order (as ``load_results`` numbers them)."""
        for i, t in enumerate(creation_order(trials)):
            if t is trial or t.trial_id == trial.trial_id:
                return i + 1
        return len(trials) + 1

    def best(self, trials: list, also: Any = None) -> str:
        """``#n value`` of the best finished trial so far (``also`` counts as finished), or ''."""
        finished = [t for t in trials if t.status == "TERMINATED" and t is not also] + ([also] if also else [])
        scored = [(t.last_result.get("objective"), t) for t in finished if t.last_result]
        scored = [(v, t) for v, t in scored if isinstance(v, (int, float)) and not math.isnan(v)]
        if not scored:
            return ""
        value, trial = max(scored, key=lambda vt: rank_key(vt[1].last_result.get("seeds_done", 0), vt[0], self.sign))
        return f"#{self.number(trials, trial)} {100 * value:.2f}"

    # Tune hooks ----------------------------------------------------------------------------
    def setup(self, **info: Any) -> None:
        # Called at fit() start, also after a restore: time the display from this session.
        self.started = self.last_status = time.monotonic()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._say(f"#{self.number(trials, trial)} start   {format_params(trial.config)}")

    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._say(f"#{self.number(trials, trial)} resumed from its last finished seed")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        done = int(result.get("seeds_done", 0))
        if done and self.seen_seeds.get(trial.trial_id) != done:
            self.seen_seeds[trial.trial_id] = done
            acc = result.get(f"acc_seed{done - 1}")
            acc_text = f"{100 * acc:.2f} %" if isinstance(acc, float) else "?"
            self._say(f"#{self.number(trials, trial)} seed {done}/{self.seeds}   acc {acc_text}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = trial.last_result or {}
        n = self.number(trials, trial)
        value = r.get("objective")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            self._say(f"#{n} done    (no seed finished)")
            return
        stopped = "" if r.get("seeds_done", 0) >= self.seeds else "   stopped early by the scheduler"
        best = self.best(trials, also=trial)
        self._say(f"#{n} done    objective {100 * value:.2f}   acc {100 * r['acc_mean']:.2f} ± "
                  f"{100 * r['acc_std']:.2f} % over {r.get('seeds_done')} seed(s){stopped}   (best: {best})")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        message = "see the trial's error.txt"
        try:
            path = trial.error_file
            if path:
                with open(path) as f:
                    message = error_line(f.read())
        except OSError:
            pass
        self._say(f"#{self.number(trials, trial)} ERROR   {message}")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if now - self.last_status >= STATUS_EVERY_S:
            self.last_status = now
            self._status(trials)

    # Output --------------------------------------------------------------------------------
    def _status(self, trials: list) -> None:
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        parts = [f"{counts.get('TERMINATED', 0)}/{self.total} done"]
        for status, word in (("RUNNING", "running"), ("PENDING", "pending"), ("ERROR", "errored")):
            if counts.get(status):
                parts.append(f"{counts[status]} {word}")
        best = self.best(trials)
        if best:
            parts.append(f"best {best}")
        print(f"─ {self._clock()}  " + " · ".join(parts), file=sys.stdout, flush=True)

    def _clock(self) -> str:
        s = int(time.monotonic() - self.started)
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"

    def _say(self, text: str) -> None:
        print(f"  {self._clock():>5}  {text}", file=sys.stdout, flush=True)
