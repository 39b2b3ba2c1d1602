"""Server-generated object ids whose text order is newest first, so storage listings page in API order."""
from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

_MAX_MS = 16**12 - 1


def _newest_first_prefix(now: float | None = None) -> str:
    ms = int((time.time() if now is None else now) * 1000)
    return f"{_MAX_MS - ms:012x}"


def new_batch_id() -> str:
    return f"batch_{_newest_first_prefix()}{secrets.token_hex(8)}"


def new_file_id() -> str:
    return f"file-{_newest_first_prefix()}{secrets.token_hex(8)}"


def derived_file_id(batch_id: str, kind: str) -> str:
    """The id of a batch's output/error/usage file: fixed per batch, so a re-run finalize rewrites the same file."""
    return f"file-{batch_id.removeprefix('batch_')}-{kind}"


def is_valid_id(value: str, prefix: str) -> bool:
    rest = value.removeprefix(prefix)
    return value.startswith(prefix) and 0 < len(rest) <= 64 and all(c.isalnum() or c == "-" for c in rest)


def tool_call_id(response_id: str, choice: int, index: int) -> str:
    """The id of a call in an answer: the same on every run of the line (a re-run shard writes the same result)."""
    return stable_id("call_", response_id, choice, index)


def stable_id(prefix: str, *parts: object) -> str:
    """Ids that a re-run of the same request reproduces, so a re-run shard rewrites identical lines."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()[:24]
    return f"{prefix}{digest}"


@dataclass(frozen=True)
class LineIds:
    """The ids one input line gets in the result files; the same on every run of the line."""

    line_id: str  # the output/error line's "id"
    request_id: str  # response.request_id
    response_id: str  # the completion's id, after "chatcmpl-" / "cmpl-"

    @classmethod
    def of(cls, batch_id: str, line: int) -> "LineIds":
        return cls(stable_id("batch_req_", batch_id, line), stable_id("req_", batch_id, line),
                   stable_id("", batch_id, line))
