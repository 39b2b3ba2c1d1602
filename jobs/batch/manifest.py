"""A prepared batch's plan: how many lines, how many were rejected, and its shards (one model each).

Written by prepare once every shard input is stored (its presence means "prepared"); read by finalize,
recovery and the deadline sweep. Each shard's estimated cost (jobs/batch/cost.py) is what fair share and
the enqueued-token quota count.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from pagebatch.jobs.batch.shard_ref import ShardKind, ShardRef


@dataclass
class ShardPlan:
    index: int
    model: str
    lines: int
    first_line: int = 0  # the shard's first input line: finalize reads shards in line order
    work: int = 0  # sum of its lines' engine work (choices x (prompt + max_tokens))
    tokens: int = 0  # sum of its lines' enqueued tokens (prompt + choices x max_tokens)


@dataclass
class Manifest:
    total: int
    rejected: int
    model: str | None
    shards: list[ShardPlan] = field(default_factory=list)
    kind: ShardKind = ShardKind.GENERATE

    def ref(self, batch_id: str, tenant: str, plan: ShardPlan) -> ShardRef:
        return ShardRef(batch_id, tenant, plan.index, self.kind)

    def enqueued(self) -> dict[str, tuple[int, int]]:
        """model -> (lines, tokens) the batch asks of it."""
        out: dict[str, tuple[int, int]] = {}
        for plan in self.shards:
            lines, tokens = out.get(plan.model, (0, 0))
            out[plan.model] = (lines + plan.lines, tokens + plan.tokens)
        return out

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Manifest":
        data = json.loads(raw)
        return cls(total=data["total"], rejected=data["rejected"], model=data["model"],
                   shards=[ShardPlan(**s) for s in data["shards"]],
                   kind=ShardKind(data.get("kind", ShardKind.GENERATE)))
