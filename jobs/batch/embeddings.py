"""The Embeddings API (``/v1/embeddings``) in batches: a body becomes one engine request per input, and their
vectors one OpenAI ``list`` object, in input order.

``input`` is a string, a list of strings, a list of token ids, or a list of lists of token ids (at most
MAX_INPUTS of them, MAX_TOKEN_IDS token ids in all; text is bounded by the line's size). ``encoding_format``
``base64`` packs each vector as little-endian float32 bytes, as OpenAI does. ``dimensions`` shortens the vector
on models trained for it (Matryoshka); the engine refuses it on the others, naming it.
"""
from __future__ import annotations

import base64
import dataclasses
import struct
from dataclasses import asdict, dataclass
from typing import Any

from pagebatch.engine.pooling import PoolingParams

from pagebatch.jobs.batch.requests import LineError, check_parameters
from pagebatch.jobs.batch.responses import combined_output
from pagebatch.jobs.batch.schema import EMBEDDINGS  # noqa: F401 - re-exported: callers import it from here
from pagebatch.jobs.batch.shard_input import EmbedSpec, PoolingSpec

MAX_INPUTS = 2048  # OpenAI's limit of inputs per request
MAX_TOKEN_IDS = 300_000  # OpenAI's limit of tokens summed over a request's inputs
ENCODING_FORMATS = ("float", "base64")

_IGNORED = {"model", "user"}  # accepted; they change nothing about the vectors
_KNOWN = {"input", "encoding_format", "dimensions"}
_UNSUPPORTED = {
    "truncate_prompt_tokens": "inputs are never truncated: one longer than the model's context fails its line "
                              "with context_length_exceeded",
}

EmbeddingInput = str | list[int]


@dataclass
class EmbeddingRequest:
    inputs: list[EmbeddingInput]
    params: PoolingParams
    encoding_format: str = "float"

    def calls(self) -> list[tuple[EmbeddingInput, PoolingParams]]:
        """The engine requests of the line, one per input, in order."""
        return [(item, self.params) for item in self.inputs]

    def to_spec(self) -> EmbedSpec:
        """The request as a shard stores it (jobs/batch/shard_input.py)."""
        return EmbedSpec(inputs=self.inputs, pooling=PoolingSpec(**asdict(self.params)),
                         encoding_format=self.encoding_format)

    @classmethod
    def from_spec(cls, spec: EmbedSpec) -> "EmbeddingRequest":
        return cls(list(spec.inputs), PoolingParams(**spec.pooling.model_dump()), spec.encoding_format)


def to_embedding_request(body: dict[str, Any]) -> EmbeddingRequest:
    check_parameters(body, _IGNORED | _KNOWN, _UNSUPPORTED)
    encoding = body.get("encoding_format")
    encoding = "float" if encoding is None else encoding
    if encoding not in ENCODING_FORMATS:
        raise LineError(f"encoding_format must be one of {', '.join(ENCODING_FORMATS)}, got {str(encoding)[:40]!r}",
                        "invalid_parameter", "encoding_format")
    dims = body.get("dimensions")
    if dims is not None and (not _is_int(dims) or dims < 1):
        raise LineError(f"dimensions must be an integer >= 1, got {str(dims)[:40]}", "invalid_parameter", "dimensions")
    return EmbeddingRequest(_inputs(body.get("input")), PoolingParams(dimensions=dims), encoding)


def _inputs(value: Any) -> list[EmbeddingInput]:
    if value is None:
        raise LineError("input is required for /v1/embeddings", "missing_input", "input")
    if isinstance(value, str) or _is_token_ids(value):
        items = [value]
    elif isinstance(value, list) and value and all(isinstance(v, str) or _is_token_ids(v) for v in value):
        items = value
    else:
        raise LineError("input must be a non-empty string, a list of strings, a list of token ids or a list of lists "
                        "of token ids", "invalid_parameter", "input")
    if len(items) > MAX_INPUTS:
        raise LineError(f"input: at most {MAX_INPUTS} inputs per request, got {len(items)}", "invalid_parameter",
                        "input")
    empty = next((i for i, item in enumerate(items) if not item), None)
    if empty is not None:
        raise LineError(f"input[{empty}] is empty; every input needs at least one token", "invalid_parameter", "input")
    num_ids = sum(len(item) for item in items if isinstance(item, list))
    if num_ids > MAX_TOKEN_IDS:
        raise LineError(f"input: at most {MAX_TOKEN_IDS} token ids per request, got {num_ids}", "invalid_parameter",
                        "input")
    return items


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and all(_is_int(t) and t >= 0 for t in value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def embeddings_body(model: str, outputs: list[Any], encoding_format: str) -> dict[str, Any]:
    """OpenAI's CreateEmbeddingResponse for a line's engine outputs, in input order."""
    data = [{"object": "embedding", "index": i, "embedding": _encode(o.embedding, encoding_format)}
            for i, o in enumerate(outputs)]
    prompt_tokens = sum(o.num_prompt_tokens for o in outputs)
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


def _encode(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


def embeddings_usage(outputs: list[Any]) -> Any:
    """A line's inputs as one output for the usage log: every input's prompt (and cached) tokens, no completion."""
    combined = combined_output(outputs)
    return dataclasses.replace(combined, num_prompt_tokens=sum(o.num_prompt_tokens for o in outputs),
                               num_cached_tokens=sum(o.num_cached_tokens for o in outputs))


def embedding_error(outputs: list[Any]) -> LineError:
    """The line's error: its first failed input's, naming which input when there are several."""
    index, out = next((i, o) for i, o in enumerate(outputs) if o.finish_reason == "error")
    message = out.error or "the request was rejected by the engine"
    if message.startswith("dimensions"):
        param = "dimensions"
    elif out.error_code in ("context_length_exceeded", "request_too_large") or message.startswith(
            ("token id", "the prompt")):
        param = "input"
    else:
        param = None
    prefix = f"input[{index}]: " if len(outputs) > 1 and param == "input" else ""
    return LineError(prefix + message, out.error_code or "invalid_request", param)
