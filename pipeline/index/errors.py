"""The index store's refusals: a batch (or an adopted shard) that cannot go into the store as
it is, and the case of a model fingerprint that differs from the store's."""
from __future__ import annotations

from pipeline.core.errors import UserError


class BatchRejected(UserError):
    """A batch that cannot go into the store as it is (shape, dims, fingerprint)."""


class FingerprintMismatch(BatchRejected):
    pass
