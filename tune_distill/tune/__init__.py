"""The search system: YAML search spaces, a Ray Tune trainable around ``run()``, results, export.

Ray is imported only when a search runs (``search``) or results are read; ``import
tune_distill`` stays light. The pieces:

- ``space``: the YAML schema and its validation (no Ray);
- ``trainable``: one trial = one config over the experiment's seeds, checkpointed per seed;
- ``tuner``: searcher, scheduler, resources, resume, the cluster check;
- ``raystate``: every Ray and Optuna internal relied on (driver state kept whole when the driver
  is killed, ``OptunaSearch`` safe to resume, orphaned study trials), pinned to one Ray version;
- ``results``: ``load_results(name) -> DataFrame`` and the tables built from it;
- ``export`` / ``report``: the best synthetic sets (npz, png, ply) and plots with a summary.
"""

from .results import list_experiments, load_results
from .space import SearchSpace, load_space, space_from_dict
from .tuner import SearchOutcome, search

__all__ = ["SearchOutcome", "SearchSpace", "list_experiments", "load_results", "load_space", "search",
           "space_from_dict"]
