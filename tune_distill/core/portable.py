"""Portable arithmetic: the same seeded run gives the same bits on any x86-64 CPU, at a cost in speed.

A CPU run is reproducible on one machine, but the libraries under torch pick their kernels by the
CPU they find: ATen's vectorised kernels by its instruction set (``ATEN_CPU_CAPABILITY``: AVX-512,
AVX2 or none), MKL its BLAS code path, oneDNN (mkldnn) its convolutions, and every parallel
reduction splits by the thread count. Each choice rounds differently; a search then amplifies the
first difference (TPE proposes other trials). ``TUNE_DISTILL_PORTABLE=1`` fixes every one of them:

- ``ATEN_CPU_CAPABILITY=default`` and ``MKL_CBWR=COMPATIBLE``: environment variables both
  libraries read once, before their first kernel runs; ``environment()`` sets them (over any
  value set by hand) at the start of the CLI, before torch computes anything, and Ray's
  workers inherit them;
- oneDNN off during the run (``torch.backends.mkldnn.flags``): convolutions fall back to ATen's
  own im2col + MKL path;
- one torch thread per run.

``arithmetic()`` wraps a run. It refuses (one line) a process where torch already chose its
kernels before the variable was seen, which would silently be non-portable.
What reproduces where, and what it costs, is measured in docs/reproducibility.md.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from .errors import UserError

VARIABLE = "TUNE_DISTILL_PORTABLE"
LIBRARIES = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}


def requested() -> bool:
    """Whether ``TUNE_DISTILL_PORTABLE`` asks for portable arithmetic (``1``, ``true``, ``yes``)."""
    return os.environ.get(VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")


def environment() -> None:
    """Set the libraries' variables when portable arithmetic is requested; call it before torch
    computes anything (the CLI does, first thing). They override the same variables set by hand:
    the point is that no machine keeps a choice of its own."""
    if requested():
        os.environ.update(LIBRARIES)


@contextlib.contextmanager
def arithmetic() -> Iterator[None]:
    """Run the block with portable arithmetic when ``TUNE_DISTILL_PORTABLE`` asks for it, else as it is."""
    if not requested():
        yield
        return
    environment()
    chosen = torch.backends.cpu.get_cpu_capability()
    wanted = os.environ["ATEN_CPU_CAPABILITY"].upper()
    if chosen != wanted:
        raise UserError(f"{VARIABLE}=1: torch chose its {chosen} kernels before the variable was seen; set it in "
                        "the environment before the process starts (export TUNE_DISTILL_PORTABLE=1)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.backends.mkldnn.flags(enabled=False):
            yield
    finally:
        torch.set_num_threads(threads)
