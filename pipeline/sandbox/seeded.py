"""Deterministic randomness for the sandbox catalogue: generators and hashes seeded by
stable strings, so the same seed gives the same catalogue in every process.
"""
from __future__ import annotations

import hashlib
import random


def stable_rng(*parts) -> random.Random:
    """A generator seeded by a stable string (never Python's randomised hash)."""
    return random.Random(":".join(str(p) for p in parts))


def stable_hash01(*parts) -> float:
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64
