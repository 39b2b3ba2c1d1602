"""A ShardResult of any number of lines in bounded memory: past a limit, its entries go to sorted run files.

``pagebatch run`` collects a whole file's results in one result. Kept in memory, a million-line file would
hold every output line until the merge; here, whenever ``limit`` entries are held, they are sorted by line
and written to one run file per kind, and :meth:`in_line_order` merges the runs (and what is still held)
lazily, so the merge that writes the result files streams too. The usage totals are summed as lines are
added, from the records themselves, so the merge does not parse the usage lines again.
"""
from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pagebatch.jobs.batch.results import Entry, ShardResult, UsageTotals
from pagebatch.jobs.batch.schema import UsageRecord

KINDS = ("output", "errors", "usage")
DEFAULT_LIMIT = 20_000  # entries held before a spill: a few MiB of result text


class SpillingResult(ShardResult):
    """A ShardResult whose entries spill to sorted run files in ``directory`` (which the caller owns)."""

    def __init__(self, directory: Path, limit: int | None = None) -> None:
        super().__init__()
        self.directory, self.limit = directory, DEFAULT_LIMIT if limit is None else limit
        self.totals = UsageTotals()
        self._runs: dict[str, list[Path]] = {kind: [] for kind in KINDS}
        self._spills = itertools.count()

    def _add(self, entries: list[Entry], line: dict[str, Any], usage: UsageRecord) -> None:
        if len(self.usage) >= self.limit:
            self.spill()  # before adding: the entry just added stays readable as the last of its list
        super()._add(entries, line, usage)
        self.totals.add(usage)

    def spill(self) -> None:
        """Write what is held to one sorted run file per kind and let it go."""
        self.directory.mkdir(parents=True, exist_ok=True)
        n = next(self._spills)
        for kind in KINDS:
            entries: list[Entry] = getattr(self, kind)
            if not entries:
                continue
            entries.sort()
            path = self.directory / f"{kind}-{n:06d}.run"
            with path.open("w", encoding="utf-8") as f:
                f.writelines(f"{number}\t{text}\n" for number, text in entries)
            self._runs[kind].append(path)
            entries.clear()

    def in_line_order(self, kind: str) -> Iterator[Entry]:  # type: ignore[override]
        held: list[Entry] = sorted(getattr(self, kind))
        return heapq.merge(*(_read_run(path) for path in self._runs[kind]), held)

    def usage_totals(self) -> UsageTotals:
        return self.totals

    def to_bytes(self) -> bytes:
        raise TypeError("a SpillingResult is merged from its run files, never stored whole")


def _read_run(path: Path) -> Iterator[Entry]:
    """A run file's entries; a result line is JSON on one line, so a line break always ends an entry."""
    with path.open(encoding="utf-8", newline="\n") as f:
        for row in f:
            number, _, text = row.partition("\t")
            yield int(number), text[:-1]
