"""A prepared batch's plan: how many lines, how many were rejected, and its shards (one model each)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class ShardPlan:
    index: int
    model: str
    lines: int
    first_line: int = 0  # the shard's first input line: finalize reads shards in line order


@dataclass
class Manifest:
    total: int
    rejected: int
    model: str | None
    shards: list[ShardPlan] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Manifest":
        data = json.loads(raw)
        return cls(total=data["total"], rejected=data["rejected"], model=data["model"],
                   shards=[ShardPlan(**s) for s in data["shards"]])
