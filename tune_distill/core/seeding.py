"""Named random streams: every random choice of a run draws from a stream derived from its seed.

A stream's seed depends only on the run's seed and the stream's name, so adding a new random
choice somewhere never shifts the numbers drawn elsewhere, and CPU runs are reproducible.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import numpy as np
import torch

T = TypeVar("T")


def stream(seed: int, name: str) -> int:
    """A reproducible 63-bit seed for one named random stream of a run."""
    words = np.random.SeedSequence([seed, *name.encode()]).generate_state(2, np.uint32)
    return int(words[0]) << 31 | int(words[1]) >> 1


def seeded(seed: int, make: Callable[[], T]) -> T:
    """``make()`` run with torch's global generator seeded ``seed`` and then restored: how every
    network is initialised reproducibly without moving anyone else's random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()
