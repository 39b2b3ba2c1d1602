"""Checks a batch input file line by line.

A bad line becomes a rejected line (reported in the error file, counted as failed) and the rest
of the batch goes on; a bad file (empty, not JSONL, too large, too many lines) raises FileError.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pagebatch.jobs.batch.embeddings import EMBEDDINGS, EmbeddingRequest, to_embedding_request
from pagebatch.jobs.batch.line_scan import top_level_string
from pagebatch.jobs.batch.requests import EngineRequest, LineError
from pagebatch.jobs.batch.responses_api import parse_body
from pagebatch.jobs.batch.seen_ids import SeenIds
from pagebatch.jobs.batch.shard_input import EmbedSpec, ShardLine

MAX_CUSTOM_ID = 512


@dataclass(frozen=True)
class Limits:
    max_batch_bytes: int
    max_batch_lines: int
    max_line_bytes: int
    default_max_tokens: int


@dataclass
class ValidLine:
    line: int  # 1-based line number in the input file
    custom_id: str
    model: str
    request: EngineRequest | EmbeddingRequest  # the body, parsed once, here

    def to_shard_line(self) -> ShardLine:
        """The line as a shard input stores it (jobs/batch/shard_input.py)."""
        return ShardLine(line=self.line, custom_id=self.custom_id, model=self.model, request=self.request.to_spec())

    @classmethod
    def from_shard_line(cls, stored: ShardLine) -> "ValidLine":
        spec = stored.request
        request = EmbeddingRequest.from_spec(spec) if isinstance(spec, EmbedSpec) else EngineRequest.from_spec(spec)
        return cls(stored.line, stored.custom_id, stored.model, request)


@dataclass
class RejectedLine:
    line: int
    custom_id: str | None
    model: str | None
    error: LineError


class FileError(Exception):
    def __init__(self, code: str, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.line = code, message, line


def check_size(num_bytes: int, limits: Limits) -> None:
    if num_bytes > limits.max_batch_bytes:
        raise FileError("file_too_large", f"the input file has {num_bytes} bytes; the limit is {limits.max_batch_bytes}")


def check_lines(
    lines: Iterable[bytes], *, endpoint: str, known_models: set[str], limits: Limits, default_model: str | None = None
) -> Iterator[ValidLine | RejectedLine]:
    """Yield one verdict per non-blank line; raise FileError for whole-file problems.

    ``default_model`` is the model of lines whose body names none (batches started by an S3 trigger).

    "Not JSONL" is only known at the end (no line was a JSON object), so callers must not act on
    the yielded lines until the iterator is exhausted.
    """
    seen = SeenIds()  # compact: a million-line file's ids cost tens of MiB, not hundreds
    count = objects = 0
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        count += 1
        if count > limits.max_batch_lines:
            raise FileError("too_many_lines", f"the input file has more than {limits.max_batch_lines} requests", number)
        verdict = _check_line(number, raw, endpoint, known_models, limits, seen, default_model)
        if not (isinstance(verdict, RejectedLine) and verdict.error.code in ("invalid_json", "line_too_long")):
            objects += 1
        yield verdict
    if count == 0:
        raise FileError("empty_file", "the input file has no requests")
    if objects == 0:
        raise FileError("invalid_file_format", "the input file is not JSONL: no line is a JSON object", 1)


def _check_line(
    number: int, raw: bytes, endpoint: str, known_models: set[str], limits: Limits, seen: SeenIds,
    default_model: str | None = None,
) -> ValidLine | RejectedLine:
    def reject(message: str, code: str, param: str | None = None, custom_id: str | None = None,
               model: str | None = None) -> RejectedLine:
        return RejectedLine(number, custom_id, model, LineError(message, code, param))

    if len(raw) > limits.max_line_bytes:
        return reject(f"line {number} is longer than {limits.max_line_bytes} bytes", "line_too_long")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        return reject(f"line {number} is not valid JSON: {e}", "invalid_json")
    except RecursionError:  # deeper than the parser goes: the custom_id is still read, so the error line keeps it
        custom_id = top_level_string(raw, "custom_id")
        return reject(f"line {number} nests JSON too deeply to be read (more than about 900 levels)", "invalid_json",
                      custom_id=custom_id if custom_id and len(custom_id) <= MAX_CUSTOM_ID else None)
    if not isinstance(data, dict):
        return reject(f"line {number} is not a JSON object", "invalid_request")
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
        return reject(f"custom_id must be a non-empty string of at most {MAX_CUSTOM_ID} characters",
                      "missing_custom_id", "custom_id")
    if not seen.add(custom_id):
        return reject(f"custom_id {custom_id!r} appears more than once in the batch", "duplicate_custom_id",
                      "custom_id", custom_id)
    body = data.get("body")
    model = body.get("model") if isinstance(body, dict) and isinstance(body.get("model"), str) else None
    if model is None and isinstance(body, dict) and "model" not in body:
        model = default_model
    if data.get("method") != "POST":
        return reject("method must be POST", "invalid_method", "method", custom_id, model)
    if data.get("url") != endpoint:
        return reject(f"url must be the batch's endpoint {endpoint}", "invalid_url", "url", custom_id, model)
    if not isinstance(body, dict):
        return reject("body must be a JSON object", "invalid_body", "body", custom_id)
    if model is None:
        return reject("body.model is required", "missing_model", "model", custom_id)
    if model not in known_models:
        return reject(f"The model {model!r} does not exist or is not served here", "model_not_found", "model",
                      custom_id, model)
    try:
        if endpoint == EMBEDDINGS:
            request: EngineRequest | EmbeddingRequest = to_embedding_request(body)
        else:
            request = parse_body(endpoint, body, limits.default_max_tokens)
    except LineError as e:
        return RejectedLine(number, custom_id, model, e)
    except (RecursionError, TypeError, ValueError) as e:  # a body shaped to break the parser fails its line only
        return reject(f"the request body could not be read: {type(e).__name__}", "invalid_request", "body",
                      custom_id, model)
    return ValidLine(number, custom_id, model, request)
