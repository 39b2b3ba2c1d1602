"""How a batch ends, for the service's finalize and for ``pagebatch run`` alike.

Both merge their shard results into the three result files with :func:`write_result_files`, then
record the counts, usage and files on the batch with :func:`conclude`, which names the lifecycle
event that ends it.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pagebatch.jobs.batch import lifecycle
from pagebatch.jobs.batch.lifecycle import Event
from pagebatch.jobs.batch.merge import MergedCounts, Source, merge_results
from pagebatch.jobs.batch.schema import BatchRecord

RESULT_KINDS: tuple[str, ...] = ("output", "errors", "usage")


def result_paths(directory: Path) -> dict[str, Path]:
    return {kind: directory / f"{kind}.jsonl" for kind in RESULT_KINDS}


def write_result_files(sources: Iterable[Source], directory: Path) -> MergedCounts:
    """``output.jsonl``, ``errors.jsonl`` and ``usage.jsonl`` in ``directory``, in input-line order."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = result_paths(directory)
    with (paths["output"].open("w", encoding="utf-8") as output,
          paths["errors"].open("w", encoding="utf-8") as errors,
          paths["usage"].open("w", encoding="utf-8") as usage):
        return merge_results(sources, output, errors, usage)


def conclude(record: BatchRecord, merged: MergedCounts, file_ids: dict[str, str | None]) -> Event:
    """Record the merged counts, usage and result files on ``record``; return the event that ends it."""
    record.request_counts.completed, record.request_counts.failed = merged.completed, merged.failed
    record.usage = merged.totals.as_batch_usage()
    record.output_file_id, record.error_file_id, record.usage_file_id = (
        file_ids.get("output"), file_ids.get("errors"), file_ids.get("usage"))
    return lifecycle.concluding_event(record.cancel_requested, merged.expired)
