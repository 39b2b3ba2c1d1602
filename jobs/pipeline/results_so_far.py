"""Results while a batch runs: the output and error lines finished so far, and a cursor for what is new.

While the batch runs (and while it finalizes) the lines come from the finished shards' results in storage,
whole shards at a time; once it has ended, from its output and error files. Either way each line is the
very text the final files hold (finalize merges the same shard results), and the cursor
(jobs/batch/results_cursor.py) makes sure no line is handed out twice, across the change of phase too.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from pagebatch.jobs.batch import lifecycle
from pagebatch.jobs.batch.ids import LineIds
from pagebatch.jobs.batch.lifecycle import BatchStatus
from pagebatch.jobs.batch.results_cursor import ResultsCursor
from pagebatch.jobs.batch.schema import BatchRecord
from pagebatch.jobs.errors import ErrorKind, JobError
from pagebatch.jobs.pipeline.finished_shards import finished_shards
from pagebatch.jobs.services import Services
from pagebatch.jobs.store.storage import NotFound

_LINE_ID = re.compile(rb'^\{"id": "([A-Za-z0-9_]+)"')
ENDED_WITH_FILES = (BatchStatus.COMPLETED, BatchStatus.CANCELLED, BatchStatus.EXPIRED)


@dataclass
class ResultsPage:
    status: str
    output: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cursor: str = ""
    has_more: bool = False  # more lines can be read right now: ask again with the cursor at once
    complete: bool = False  # the batch has ended and every line was handed out: nothing will follow


def results_so_far(svc: Services, record: BatchRecord, cursor: ResultsCursor, limit: int) -> ResultsPage:
    """The lines of ``record`` not yet handed out under ``cursor``: about ``limit`` of them (whole shards while
    the batch runs, so a page may hold more), output and error lines apart, each in input-line order."""
    if record.status in ENDED_WITH_FILES:
        return _from_result_files(svc, record, cursor, limit)
    if record.status == BatchStatus.FAILED:
        return ResultsPage(record.status, cursor=cursor.encode(), complete=True)  # failed as a whole: no lines
    try:
        return _from_shards(svc, record, cursor, limit)
    except NotFound:
        # finalize finished and removed the shard results meanwhile: the result files hold the same lines
        latest = svc.state.get(record.tenant, record.id)
        if latest is None or not lifecycle.is_terminal(latest.status):
            raise JobError("the batch's results are being moved into its result files; retry shortly",
                           ErrorKind.UNAVAILABLE) from None
        return results_so_far(svc, latest, cursor, limit)


def _from_shards(svc: Services, record: BatchRecord, cursor: ResultsCursor, limit: int) -> ResultsPage:
    page = ResultsPage(record.status)
    fresh = ResultsCursor(bytearray(cursor.delivered), cursor.rejected)
    for shard in finished_shards(svc, record):
        given = fresh.rejected if shard.index is None else fresh.has(shard.first_line or 0)
        if given:
            continue
        if len(page.output) + len(page.errors) >= limit:
            page.has_more = True
            break
        result = shard.load()
        for kind, lines in (("output", page.output), ("errors", page.errors)):
            for line, text in result.in_line_order(kind):
                lines.append(text)
                fresh.add(line)
        fresh.rejected = fresh.rejected or shard.index is None
    page.cursor = fresh.encode()
    return page


def _from_result_files(svc: Services, record: BatchRecord, cursor: ResultsCursor, limit: int) -> ResultsPage:
    page = ResultsPage(record.status)
    given = {LineIds.of(record.id, line).line_id.encode() for line in cursor.lines()}
    fresh = ResultsCursor(cursor.delivered, cursor.rejected, cursor.output_offset, cursor.errors_offset)
    for kind, file_id, lines in (("output", record.output_file_id, page.output),
                                 ("errors", record.error_file_id, page.errors)):
        offset = getattr(fresh, f"{kind}_offset")
        if file_id is not None:
            try:
                for line, end in _lines_from(svc, record.tenant, file_id, offset):
                    if len(page.output) + len(page.errors) >= limit:
                        page.has_more = True
                        break
                    offset = end
                    match = _LINE_ID.match(line)
                    if match is None or match.group(1) not in given:
                        lines.append(line.decode())
            except NotFound:
                raise JobError(f"the batch's {kind} file {file_id} no longer exists (its output_expires_after "
                               "passed, or it was deleted)", ErrorKind.NOT_FOUND) from None
        setattr(fresh, f"{kind}_offset", offset)
        if page.has_more:
            break
    page.cursor = fresh.encode()
    page.complete = not page.has_more
    return page


def _lines_from(svc: Services, tenant: str, file_id: str, start: int) -> Iterator[tuple[bytes, int]]:
    """(line without its newline, the offset just past it) of every whole line from byte ``start`` on."""
    buf = bytearray()
    offset = start
    for chunk in svc.files.content(tenant, file_id, start):
        begin = 0
        while (end := chunk.find(b"\n", begin)) >= 0:
            buf += chunk[begin:end]
            offset += len(buf) + 1
            yield bytes(buf), offset
            buf.clear()
            begin = end + 1
        buf += chunk[begin:]
