"""Which of a running batch's shards are finished, and where their results are.

The one place that results-while-running and the progress stream learn it from: it reads the batch's
done record (``svc.state.shards``, jobs/store/shard_ledger.py), its manifest and the shard result keys
(jobs/store/layout.py). When the shard contract changes, this is the function to follow it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pagebatch.jobs.batch.manifest import Manifest
from pagebatch.jobs.batch.results import ShardResult
from pagebatch.jobs.batch.schema import BatchRecord
from pagebatch.jobs.bounded_cache import BoundedCache
from pagebatch.jobs.pipeline.finalize import load_manifest
from pagebatch.jobs.services import Services
from pagebatch.jobs.store import layout

_MANIFESTS_KEPT = 256


@dataclass(frozen=True)
class FinishedShard:
    """A finished shard; ``index`` None is the batch's rejected lines (validation errors), which sit anywhere."""

    index: int | None
    first_line: int | None  # the first input line it holds: a shard's results always include it
    lines: int | None  # how many input lines it holds (None: the rejected lines, unknown until loaded)
    load: Callable[[], ShardResult]  # raises storage.NotFound once finalize has cleaned up


# a manifest never changes once written, so each process reads it once per batch
_manifests: BoundedCache[str, Manifest] = BoundedCache(_MANIFESTS_KEPT)


def finished_shards(svc: Services, record: BatchRecord) -> list[FinishedShard]:
    """The batch's shards whose results are in storage now, in input-line order (the rejected lines first)."""
    manifest = _manifests.get(record.id, lambda: load_manifest(svc, record.tenant, record.id))
    if manifest is None:
        return []  # not prepared yet (or already cleaned up by finalize)
    done = svc.state.shards.done(record.id)

    def load(key: str) -> Callable[[], ShardResult]:
        return lambda: ShardResult.from_bytes(svc.storage.get_bytes(key))

    # prepare writes the rejected lines before the manifest: a prepared batch has them (perhaps none)
    finished = [FinishedShard(None, None, None, load(layout.prepare_result(record.tenant, record.id)))]
    for plan in sorted(manifest.shards, key=lambda p: p.first_line):
        if plan.index in done:
            finished.append(FinishedShard(plan.index, plan.first_line, plan.lines,
                                          load(layout.shard_result(record.tenant, record.id, plan.index))))
    return finished
