"""On-disk cache for results that are a pure function of their inputs and costly to recompute.

Two things are cached under ``$XDG_CACHE_HOME/tune_distill/`` (``~/.cache`` without it), beside
the MNIST files: the trajectory-matching experts (``experts/``) and the distribution-matching
stage a trajectory-matching run starts from (``stages/``). A trajectory-matching search varies
only the ``tm_*`` settings, so every trial of a seed would otherwise redo the same first stage.

Entries are keyed by a hash of everything they depend on, torch's CPU thread count included: a
CPU run is reproducible at a given thread count, but another count sums floats in another order
and training drifts apart (after 50 steps an expert's weights differ by 3 % of the largest one
between 1 and 2 threads), and an entry must be exactly what the run would have computed. They
are never invalidated: after changing the code that produces them, delete the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from .data.base import Clouds
from .data.mnist import default_cache_dir

T = TypeVar("T")


def cache_path(kind: str, spec: dict[str, Any], clouds: Clouds) -> Path:
    """Where the ``kind`` entry computed from ``clouds`` lives; ``spec`` (JSON-serialisable) is all
    else it depends on. Every entry is keyed by its data and torch's thread count here."""
    spec = spec | {"data_clouds": len(clouds), "data_points": int(clouds.counts.sum()),
                   "threads": torch.get_num_threads()}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return default_cache_dir().parent / kind / f"{key}.pt"


def cached(path: Path, build: Callable[[], T]) -> T:
    """The object saved at ``path``, else ``build()``, saved there for next time."""
    if path.exists():
        return torch.load(path)
    value = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")  # processes racing to fill an entry each write whole files
    torch.save(value, partial)
    partial.replace(path)
    return value
