"""A shard's identity wherever it travels: task arguments, log fields, the fair queue, the done record, recovery.

A shard is the unit that crosses the queue: the lines of one batch, for one model, run by one task.
:class:`ShardRef` names it; this module is the one place that knows how a ref is written into a task
message (:meth:`ShardRef.to_task_args`) and read back (:meth:`ShardRef.from_task_args`).

The task argument is one JSON object ``{"v": 1, "batch_id", "tenant", "shard", "kind"}``. Its fields
are stable across versions; ``v`` says which rules the sender followed. A worker reads every version up
to :data:`SHARD_REF_VERSION`, and the positional ``[batch_id, tenant, shard]`` the service sent before
the contract existed; a newer version raises :class:`ShardTooNew`, and the worker hands the message
back to the queue instead of running it (docs/architecture.md, "The shard contract").
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pagebatch.jobs.batch.schema import EMBEDDINGS

SHARD_REF_VERSION = 1
# The broker message header that names the shard (ShardRef.token), so the fair queue can find a shard's
# message among the queued and unacknowledged ones without decoding its body.
SHARD_HEADER = "pagebatch_shard"


class ShardTooNew(Exception):
    """A shard (its task message or its stored input) of a version this worker does not know: leave it for another."""


class ShardKind(StrEnum):
    GENERATE = "generate"  # chat, completions, responses: the engine generates text
    EMBED = "embed"  # embeddings: the engine only prefills

    @classmethod
    def of_endpoint(cls, endpoint: str) -> "ShardKind":
        return cls.EMBED if endpoint == EMBEDDINGS else cls.GENERATE


@dataclass(frozen=True)
class ShardRef:
    batch_id: str
    tenant: str
    index: int
    kind: ShardKind = ShardKind.GENERATE

    @property
    def token(self) -> str:
        """``batch_id|index``: the shard's name in the fair queue and in its broker message's header."""
        return f"{self.batch_id}|{self.index}"

    def log_fields(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "tenant": self.tenant, "shard": self.index}

    def to_task_args(self) -> list[Any]:
        return [{"v": SHARD_REF_VERSION, "batch_id": self.batch_id, "tenant": self.tenant, "shard": self.index,
                 "kind": str(self.kind)}]

    @classmethod
    def from_task_args(cls, args: Any) -> "ShardRef":
        """The ref a shard task message carries; ValueError if it is not one, ShardTooNew if it is newer."""
        if isinstance(args, (list, tuple)) and len(args) == 3 and all(isinstance(a, str) for a in args[:2]):
            batch_id, tenant, index = args  # the positional form sent before the contract
            return cls(batch_id, tenant, _index(index))
        if not (isinstance(args, (list, tuple)) and len(args) == 1 and isinstance(args[0], dict)):
            raise ValueError(f"not a shard task's arguments: {str(args)[:200]}")
        wire = args[0]
        version = wire.get("v")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"a shard task's arguments carry no version: {str(wire)[:200]}")
        if version > SHARD_REF_VERSION:
            raise ShardTooNew(f"shard task version {version}; this worker reads up to {SHARD_REF_VERSION}")
        batch_id, tenant = wire.get("batch_id"), wire.get("tenant")
        if not isinstance(batch_id, str) or not isinstance(tenant, str):
            raise ValueError(f"a shard task's arguments need batch_id and tenant: {str(wire)[:200]}")
        try:
            kind = ShardKind(wire.get("kind", ShardKind.GENERATE))
        except ValueError:
            raise ShardTooNew(f"shard kind {str(wire.get('kind'))[:40]!r} is unknown to this worker") from None
        return cls(batch_id, tenant, _index(wire.get("shard")), kind)


def _index(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"a shard index must be an integer >= 0, got {str(value)[:40]}")
    return value
