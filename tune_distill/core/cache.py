"""On-disk cache for results that are a pure function of their inputs and costly to recompute.

Two things are cached under ``$XDG_CACHE_HOME/tune_distill/`` (``~/.cache`` without it), beside
the MNIST files: the trajectory-matching experts (``experts/``) and the distribution-matching
stage a trajectory-matching run starts from (``stages/``). A trajectory-matching search varies
only the ``tm_*`` settings, so every trial of a seed would otherwise redo the same first stage.

Entries are keyed by a hash of everything they depend on, torch's CPU thread count included: a
CPU run is reproducible at a given thread count, but another count sums floats in another order
and training drifts apart (after 50 steps an expert's weights differ by 3 % of the largest one
between 1 and 2 threads), and an entry must be exactly what the run would have computed. They
also carry ``code_version`` of the modules that produce them, so an entry written by other code
(an older or newer checkout) is never reused: it is simply not found, and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from .types import Clouds

T = TypeVar("T")


PACKAGE = Path(__file__).resolve().parents[1]  # the tune_distill folder


def code_version(*modules: str) -> str:
    """A hash of the source of the named modules or packages of tune_distill (e.g. ``"methods"``,
    ``"nets.convnet"``): any edit to them gives another version."""
    digest = hashlib.sha256()
    for name in sorted(modules):
        path = PACKAGE.joinpath(*name.split("."))
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
        if not files or not all(f.is_file() for f in files):
            raise ValueError(f"code_version: no module tune_distill.{name}")
        for f in files:
            digest.update(str(f.relative_to(PACKAGE)).encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/tune_distill`` (``~/.cache`` without it): downloads and cached results."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tune_distill"


def cache_path(kind: str, spec: dict[str, Any], clouds: Clouds, code: tuple[str, ...]) -> Path:
    """Where the ``kind`` entry computed from ``clouds`` lives; ``spec`` (JSON-serialisable) is all
    else it depends on, ``code`` the modules that compute it (see ``code_version``). Every entry
    is keyed by its data, that code and torch's thread count here."""
    spec = spec | {"data_clouds": len(clouds), "data_points": int(clouds.counts.sum()), "code": code_version(*code),
                   "threads": torch.get_num_threads()}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / kind / f"{key}.pt"


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
