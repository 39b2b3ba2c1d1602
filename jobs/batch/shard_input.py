"""What prepare writes for a shard and a worker reads back: a typed, versioned schema that jobs/ owns.

A shard input is JSONL: a :class:`ShardHeader` line (``{"version": 2, "batch_id", "shard", "kind", "lines"}``),
then one :class:`ShardLine` per request, in input-line order. The request inside a line is described here,
field by field (:class:`SamplingSpec`, :class:`GenerateSpec`, :class:`EmbedSpec`), never as the engine's
dataclasses dumped as they are: the engine's types are built from it in one function each
(``EngineRequest.from_spec``, ``EmbeddingRequest.from_spec``) and turned into it in one function each
(``to_spec``); tests/jobs/test_shard_contract.py checks the specs cover every field of the engine's types.

Versions. Every change to these models bumps :data:`SHARD_INPUT_VERSION`. A worker reads every version up
to its own (version 1 is the format written before this schema existed: one line per request, no header)
and refuses a newer one (:class:`~pagebatch.jobs.batch.shard_ref.ShardTooNew`) without counting an attempt,
so during a rolling upgrade an old worker hands a new shard back to the queue for a new worker. Anything
else that cannot be read raises :class:`ShardUnreadable`; the worker counts an attempt before parsing, so
an unreadable shard fails its lines (:func:`salvage_lines` recovers what it can of them) after a bounded
number of attempts.

Adding a request field (say ``tools`` on ``EngineRequest``): add it, with a default, to ``GenerateSpec``
(or a ``SamplingParams`` field to ``SamplingSpec``), and bump ``SHARD_INPUT_VERSION``. The conversion
functions copy fields by name, so nothing else changes.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pagebatch.jobs.batch.shard_ref import ShardKind, ShardTooNew

SHARD_INPUT_VERSION = 2
LEGACY_VERSION = 1  # no header; each line {"line", "custom_id", "model", "request": <the engine's dataclasses>}


class ShardUnreadable(Exception):
    """A stored shard input that is not a shard input of any version this worker knows."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ToolsSpec(_Spec):
    """Tool calling of a generate request (the fields of the engine's ToolCalling)."""

    functions: str  # JSON text of OpenAI's function objects
    choice: str = "auto"
    function: str | None = None
    parallel: bool = True


class SamplingSpec(_Spec):
    """The sampling parameters of a generate request (the fields of the engine's SamplingParams)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    max_tokens: int = 16
    stop: list[str] = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None
    skip_special_tokens: bool = True
    choices: list[str] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    min_tokens: int = 0
    reject_over_context: bool = False
    structured: dict[str, str] | None = None  # {"kind", "spec", "source"}: the engine's GrammarSpec
    tools: ToolsSpec | None = None  # the engine's ToolCalling


class PoolingSpec(_Spec):
    """The pooling parameters of an embedding request (the fields of the engine's PoolingParams)."""

    dimensions: int | None = None
    normalize: bool | None = None
    pooling: str | None = None


Prompt = str | list[int] | list[dict[str, Any]]  # text, token ids, or chat messages (tool calls and results too)


class GenerateSpec(_Spec):
    kind: Literal["generate"] = "generate"
    prompt: Prompt
    sampling: SamplingSpec
    n: int = 1
    echo: dict[str, Any] | None = None
    prompts: list[Prompt] | None = None  # /v1/completions with a list of prompts (``prompt`` is the first)
    legacy_functions: bool = False  # calls answered as message.function_call (the legacy ``functions``)


class EmbedSpec(_Spec):
    kind: Literal["embed"] = "embed"
    inputs: list[str | list[int]]
    pooling: PoolingSpec = Field(default_factory=PoolingSpec)
    encoding_format: str = "float"


RequestSpec = Annotated[GenerateSpec | EmbedSpec, Field(discriminator="kind")]


class ShardLine(_Spec):
    line: int  # 1-based line number in the input file
    custom_id: str
    model: str
    request: RequestSpec


class ShardHeader(_Spec):
    version: int
    batch_id: str
    shard: int
    kind: ShardKind
    lines: int


def encode_shard(header: ShardHeader, lines: Iterable[ShardLine]) -> bytes:
    # ASCII JSON: a prompt may hold a lone surrogate (valid JSON, not encodable UTF-8) that only the engine refuses.
    parts = [json.dumps(header.model_dump(mode="json"))]
    parts += [json.dumps(line.model_dump(mode="json")) for line in lines]
    return ("\n".join(parts) + "\n").encode()


def new_header(batch_id: str, shard: int, kind: ShardKind, lines: int) -> ShardHeader:
    return ShardHeader(version=SHARD_INPUT_VERSION, batch_id=batch_id, shard=shard, kind=kind, lines=lines)


def shard_version(raw: bytes) -> int:
    """The version of a stored shard input, from its first line; ShardUnreadable if it has none."""
    first = raw.split(b"\n", 1)[0]
    try:
        head = json.loads(first)
    except (ValueError, RecursionError):
        raise ShardUnreadable("the shard input's first line is not JSON") from None
    if isinstance(head, dict) and "version" in head:
        version = head["version"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ShardUnreadable(f"the shard input's version is not a positive integer: {str(version)[:40]}")
        return version
    if isinstance(head, dict) and "custom_id" in head and "request" in head:
        return LEGACY_VERSION
    raise ShardUnreadable("the shard input has no header")


def decode_shard(raw: bytes, kind: ShardKind | None = None) -> list[ShardLine]:
    """The requests of a stored shard input of any known version.

    ShardTooNew for a version above SHARD_INPUT_VERSION (leave it for a newer worker), ShardUnreadable for
    anything else that is not a shard input (including a header whose kind is not ``kind``).
    """
    version = shard_version(raw)
    if version > SHARD_INPUT_VERSION:
        raise ShardTooNew(f"shard input version {version}; this worker reads up to {SHARD_INPUT_VERSION}")
    rows = [row for row in raw.split(b"\n") if row.strip()]
    try:
        if version == LEGACY_VERSION:
            return [_from_legacy(json.loads(row)) for row in rows]
        header = ShardHeader.model_validate(json.loads(rows[0]))
        lines = [_shard_line(row) for row in rows[1:]]
    except (ValidationError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
        raise ShardUnreadable(f"the shard input (version {version}) does not match its schema: "
                              f"{_short(e)}") from None
    if header.lines != len(lines):
        raise ShardUnreadable(f"the shard input's header announces {header.lines} lines, it holds {len(lines)}")
    if kind is not None and header.kind != kind:
        raise ShardUnreadable(f"the shard input holds {header.kind} lines, its task says {kind}")
    return lines


def _shard_line(row: bytes) -> ShardLine:
    """One stored request: parsed and validated in one step by pydantic; what its JSON parser refuses (a lone
    surrogate, NaN) and Python's accepts goes the longer way, which also gives a schema error its message."""
    try:
        return ShardLine.model_validate_json(row)
    except ValidationError:
        return ShardLine.model_validate(json.loads(row))


def _from_legacy(data: dict[str, Any]) -> ShardLine:
    """A version-1 line: the request as ``asdict`` of the engine's SamplingParams / PoolingParams."""
    request = data["request"]
    if request.get("kind") == "embedding":
        spec: GenerateSpec | EmbedSpec = EmbedSpec(inputs=request["inputs"], pooling=PoolingSpec(**request["params"]),
                                                   encoding_format=request.get("encoding_format", "float"))
    else:
        spec = GenerateSpec(prompt=request["prompt"], sampling=SamplingSpec(**request["params"]),
                            n=request.get("n", 1), echo=request.get("echo"))
    return ShardLine(line=data["line"], custom_id=data["custom_id"], model=data["model"], request=spec)


@dataclass(frozen=True)
class SalvagedLine:
    """What could still be read of a line of an unreadable shard: enough to report it failed."""

    line: int | None
    custom_id: str | None
    model: str | None


def salvage_lines(raw: bytes) -> list[SalvagedLine]:
    """Every request line of a shard input, as far as each can be read (a header line is skipped)."""
    out = []
    for row in raw.split(b"\n"):
        if not row.strip():
            continue
        try:
            data = json.loads(row)
        except (ValueError, RecursionError):
            out.append(SalvagedLine(None, None, None))
            continue
        if isinstance(data, dict) and "version" in data and "custom_id" not in data:
            continue  # the header
        data = data if isinstance(data, dict) else {}
        line, custom_id, model = data.get("line"), data.get("custom_id"), data.get("model")
        out.append(SalvagedLine(line if isinstance(line, int) and not isinstance(line, bool) else None,
                                custom_id if isinstance(custom_id, str) else None,
                                model if isinstance(model, str) else None))
    return out


def _short(error: Exception) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where}: {first.get('msg', 'invalid')}"[:300]
    return f"{type(error).__name__}: {str(error)[:200]}"
