"""A line that did not run, as a result-file line: refused by the server, or not run to the end by the batch.

Pure and free of the engine, so every process (the API's sweeper included) can account for lines.
"""
from __future__ import annotations

from typing import Any

from pagebatch.jobs.batch.ids import LineIds

STOP_MESSAGES = {
    "batch_cancelled": "The batch was cancelled before this request finished.",
    "batch_expired": "This request could not be executed before the completion window expired.",
}


class LineError(Exception):
    """A request that cannot run, reported back in OpenAI's error shape."""

    def __init__(self, message: str, code: str = "invalid_request", param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


def request_error_line(ids: LineIds, custom_id: str | None, error: LineError) -> dict[str, Any]:
    """A request the server refused (HTTP 400 in the online API)."""
    body = {"error": {"message": error.message, "type": "invalid_request_error", "param": error.param,
                      "code": error.code}}
    return {"id": ids.line_id, "custom_id": custom_id,
            "response": {"status_code": 400, "request_id": ids.request_id, "body": body}, "error": None}


def batch_error_line(ids: LineIds, custom_id: str | None, code: str, message: str) -> dict[str, Any]:
    """A request the batch did not run to the end: cancelled, expired, or its shard failed."""
    return {"id": ids.line_id, "custom_id": custom_id, "response": None, "error": {"code": code, "message": message}}
