"""What the Etsy client raises: HTTP and quota failures, and a stop while it waits."""
from __future__ import annotations


class EtsyError(Exception):
    def __init__(self, message: str, status: int | None = None, request_id: str | None = None,
                 path: str | None = None):
        super().__init__(message)
        self.status = status
        self.request_id = request_id
        self.path = path


class RequestFailed(EtsyError):
    """Retries spent on 5xx, network errors or bad bodies."""


class ClientError(EtsyError):
    """A 4xx other than 429 (bad request, not found): retrying would not help."""


class AuthError(ClientError):
    """401/403: the key is wrong or lacks the shared secret. Fatal for the run."""


class QuotaExhausted(EtsyError):
    """The day's quota is spent down to the floor; ``retry_after_s`` says when to look again."""

    def __init__(self, message: str, retry_after_s: float, **kw):
        super().__init__(message, **kw)
        self.retry_after_s = retry_after_s


class Stopped(Exception):
    """A stop was requested while the client was waiting."""
