"""Files on disk: the digest that data loaders verify downloads and shipped files against."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of a file's bytes (``algorithm``: any hashlib name, e.g. md5, sha256), read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
