"""tune_distill: dataset distillation for point clouds, with a Ray Tune + Optuna search system."""

from typing import Any

from .core.errors import UserError
from .recipe.config import PRESETS, Config, make_config
from .recipe.run import RunResult, run

__all__ = ["Config", "PRESETS", "RunResult", "UserError", "load_distilled", "load_results", "make_config", "run"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # load_results needs pandas: imported only when asked for, so that importing the engine
    # (tune_distill.sparse, .data, .methods) loads neither pandas nor Ray.
    if name == "load_results":
        from .tune.results import load_results

        return load_results
    if name == "load_distilled":  # the shipped sets (distilled/), as a dataset hub's loader
        from .recipe.shipped import load_distilled

        return load_distilled
    raise AttributeError(f"module 'tune_distill' has no attribute {name!r}")
