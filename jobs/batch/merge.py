"""Merging shard results into a batch's result files, in input-line order, reading shards only as needed.

A batch's shards hold consecutive runs of its lines per model, and prepare's rejected lines may sit
anywhere, so the merge is a k-way merge by line number. Each source says the first line it can
hold; a shard is loaded only when the merge reaches that line, so a single-model batch keeps about
two shards in memory however large it is.
"""
from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

from pagebatch.jobs.batch.results import ShardResult, UsageTotals

Source = tuple[int, Callable[[], ShardResult]]  # (the first input line it may hold, how to load it)
KINDS = ("output", "errors", "usage")
_Item = tuple[int, int, str]  # (line, kind index, JSONL text)


def loaded(result: ShardResult, first_line: int = 0) -> Source:
    return first_line, lambda: result


@dataclass
class MergedCounts:
    completed: int = 0
    failed: int = 0
    expired: bool = False
    totals: UsageTotals = field(default_factory=UsageTotals)

    def add(self, result: ShardResult) -> None:
        self.completed += result.completed
        self.failed += result.failed
        self.expired = self.expired or result.stopped == "batch_expired"
        self.totals.merge(result.usage_totals())


def _items(result: ShardResult) -> Iterator[_Item]:
    return heapq.merge(*(_tagged(result, i, kind) for i, kind in enumerate(KINDS)))


def _tagged(result: ShardResult, index: int, kind: str) -> Iterator[_Item]:
    for n, text in result.in_line_order(kind):
        yield n, index, text


def merge_results(sources: Iterable[Source], output: TextIO, errors: TextIO, usage: TextIO) -> MergedCounts:
    """Write every source's output, error and usage lines in input-line order; count them, sum the usage."""
    sinks = (output, errors, usage)
    merged = MergedCounts()
    waiting = sorted(sources, key=lambda source: source[0])
    heap: list[tuple[_Item, int, Iterator[_Item]]] = []
    opened = 0
    while waiting or heap:
        while waiting and (not heap or waiting[0][0] <= heap[0][0][0]):
            result = waiting.pop(0)[1]()
            merged.add(result)
            stream = _items(result)
            first = next(stream, None)
            if first is not None:
                opened += 1
                heapq.heappush(heap, (first, opened, stream))
        if not heap:
            continue
        (line, kind, text), seq, stream = heapq.heappop(heap)
        sinks[kind].write(text + "\n")
        following = next(stream, None)
        if following is not None:
            heapq.heappush(heap, (following, seq, stream))
    return merged
