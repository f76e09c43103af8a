"""Small helpers shared by the search modules."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator


@contextlib.contextmanager
def quiet_loggers(names: tuple[str, ...], enabled: bool = True) -> Iterator[None]:
    """Raise the named loggers to CRITICAL for the duration of the block, then restore them."""
    if enabled and "optuna" in names:
        # Optuna configures its logger (level INFO) on first use, which would undo ours.
        import optuna

        optuna.logging.get_verbosity()
    loggers = [logging.getLogger(n) for n in names] if enabled else []
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
