"""Errors the service reports to its callers: each carries a kind; only api/ maps kinds to HTTP statuses."""
from __future__ import annotations

from enum import StrEnum

import redis
from botocore.exceptions import BotoCoreError, ClientError


class ErrorKind(StrEnum):
    INVALID = "invalid"  # the caller's input is wrong; retrying it unchanged will fail again
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"  # the object is in a state that does not allow this
    TOO_LARGE = "too_large"
    QUOTA = "quota"  # the tenant holds as much as its quota allows: free some (or wait for batches to end)
    UNAVAILABLE = "unavailable"  # a dependency (Redis, object storage) is briefly away: retry later


class JobError(Exception):
    """A user-facing error: what was wrong (``message``), which parameter (``param``), and its kind."""

    def __init__(self, message: str, kind: ErrorKind = ErrorKind.INVALID, *, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.kind, self.param, self.code = message, kind, param, code


# What a dependency outage looks like from Python: callers answer "retry later", never "failed".
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, BotoCoreError, ClientError, ConnectionError,
                                                  TimeoutError)

_RETRYABLE_S3_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "ServiceUnavailable",
                       "InternalError", "RequestTimeTooSkewed"}


def is_outage(error: BaseException) -> bool:
    """Whether waiting can fix it: any connection or Redis error, but of S3's answers only 5xx and throttling
    (a refused or misconfigured request, such as AccessDenied or NoSuchBucket, stays refused)."""
    if isinstance(error, ClientError):
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return status >= 500 or error.response.get("Error", {}).get("Code") in _RETRYABLE_S3_CODES
    return isinstance(error, OUTAGE_ERRORS)
