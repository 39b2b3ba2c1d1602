"""Results of any length in bounded memory: SpillingResult, the merge over it, and `pagebatch run` using it."""
from __future__ import annotations

import io
import json
import random

from pagebatch.jobs.batch import spilling_result
from pagebatch.jobs.batch.merge import loaded, merge_results
from pagebatch.jobs.batch.results import RequestContext, ShardResult
from pagebatch.jobs.batch.schema import UsageRecord
from pagebatch.jobs.batch.spilling_result import SpillingResult
from pagebatch.jobs.commands.local_run import run_local
from pagebatch.jobs.engine_host import EngineOptions
from pagebatch.jobs.settings import Settings
from tests.batch_helpers import chat_line, jsonl

CTX = RequestContext("batch_x", "t", "w")


def _fill(result: ShardResult, numbers: list[int], held: list[int] | None = None) -> None:
    """Lines in the given order: every seventh an error; \\u2028 in the text must not split a line."""
    for n in numbers:
        usage = UsageRecord(batch_id="batch_x", tenant="t", custom_id=f"c{n}", model="m", prompt_tokens=n,
                            cached_tokens=n % 3, completion_tokens=1, finish_reason="stop", line=n)
        line = {"custom_id": f"c{n}", "text": f"answer {n}\u2028with a separator\tand a tab"}
        (result.add_error if n % 7 == 0 else result.add_output)(line, usage)
        if held is not None:
            held.append(len(result.usage))


def _merged(result: ShardResult) -> tuple[str, str, str, tuple[int, int, int, int, int]]:
    sinks = io.StringIO(), io.StringIO(), io.StringIO()
    counts = merge_results([loaded(result)], *sinks)
    totals = counts.totals
    return (*(s.getvalue() for s in sinks),
            (counts.completed, counts.failed, totals.prompt, totals.cached, totals.completion))


def test_spilled_lines_merge_exactly_as_held_ones_while_memory_holds_at_most_the_limit(tmp_path):
    numbers = list(range(1, 3001))
    random.Random(7).shuffle(numbers)  # lines finish out of order
    plain, spilled, held = ShardResult(), SpillingResult(tmp_path / "spill", limit=250), []
    _fill(plain, numbers)
    _fill(spilled, numbers, held)

    assert max(held) <= 250  # never more than the limit in memory
    assert len(list((tmp_path / "spill").glob("usage-*.run"))) == 3000 // 250 - 1
    assert _merged(spilled) == _merged(plain)
    output = _merged(spilled)[0].splitlines()
    assert [json.loads(o)["custom_id"] for o in output] == [f"c{n}" for n in range(1, 3001) if n % 7]
    assert spilled.completed == plain.completed and spilled.failed == plain.failed == 3000 // 7


def test_the_last_added_line_stays_readable_when_a_spill_happens(tmp_path):
    result = SpillingResult(tmp_path, limit=10)
    for n in range(1, 26):
        _fill(result, [n])
        assert result.usage[-1][0] == n  # what the journal of `pagebatch run` reads after each add


def test_a_run_spilling_its_results_writes_the_files_of_one_that_holds_them(tmp_path, tiny_model, one_thread,
                                                                              monkeypatch):
    model = tiny_model.name
    lines = [chat_line(f"doc-{i}", model, f"note {i}", max_tokens=2, temperature=0) for i in range(60)]
    lines[10:10] = ["{not json"]
    lines[40:40] = [chat_line("doc-3", model)]  # a duplicate custom_id, rejected in the middle of the file
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(lines))
    options = EngineOptions(max_num_seqs=8, dtype="float32")

    held = run_local(Settings(), source, str(tiny_model), tmp_path / "held", show_progress=False, options=options)
    monkeypatch.setattr(spilling_result, "DEFAULT_LIMIT", 7)
    spilled = run_local(Settings(), source, str(tiny_model), tmp_path / "spilled", show_progress=False,
                        options=options)

    for report in (held, spilled):
        assert report.batch.status == "completed"
        assert report.batch.request_counts.model_dump() == {"total": 62, "completed": 60, "failed": 2}
    assert held.batch.usage == spilled.batch.usage
    for kind in ("output", "errors", "usage"):
        first = [_without_ids(row) for row in (tmp_path / "held" / f"{kind}.jsonl").read_text().splitlines()]
        second = [_without_ids(row) for row in (tmp_path / "spilled" / f"{kind}.jsonl").read_text().splitlines()]
        assert first == second and first
    usage_lines = [json.loads(row)["line"] for row in (tmp_path / "spilled" / "usage.jsonl").read_text().splitlines()]
    assert usage_lines == sorted(usage_lines) == list(range(1, 63))
    assert not list((tmp_path / "spilled").glob(".spill-*"))  # the run files are gone once merged


def _without_ids(row: str) -> dict:
    """A result line without what differs between two runs of a file (batch id, times, timings)."""
    data = json.loads(row)
    for key in ("id", "batch_id", "queue_time", "time_to_first_token", "total_time"):
        data.pop(key, None)
    response = data.get("response") or {}
    response.pop("request_id", None)
    body = response.get("body") or {}
    for key in ("id", "created"):
        body.pop(key, None)
    return data
