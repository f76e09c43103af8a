"""tune_distill: dataset distillation for point clouds, with a Ray Tune + Optuna search system."""

from .config import Config, PRESETS, make_config
from .errors import UserError
from .run import RunResult, run
from .tune.results import load_results  # pandas only; Ray is imported when reading

__all__ = ["Config", "PRESETS", "RunResult", "UserError", "load_results", "make_config", "run"]
__version__ = "0.1.0"
