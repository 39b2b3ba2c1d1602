"""`pagebatch run` validates its file as the engine asks for lines, yet a file it must refuse fails before the
model loads and before any line runs (a model path that does not exist proves nothing was loaded)."""
from __future__ import annotations

import json

import pytest

from pagebatch.jobs.commands.local_run import _most_lines, run_local
from pagebatch.jobs.settings import Settings
from tests.batch_helpers import chat_line, jsonl

NO_MODEL = "/nonexistent/model-dir"


@pytest.mark.parametrize("limit, blank_lines, code", [(3, 0, "too_many_lines"), (5, 0, None), (5, 4, None)])
def test_the_line_limit_is_checked_before_anything_runs(tmp_path, limit, blank_lines, code):
    source = tmp_path / "in.jsonl"
    lines = [chat_line(f"c{i}", "m") for i in range(5)] + [""] * blank_lines  # blank lines are not requests
    source.write_bytes(jsonl(lines))
    if code is None:  # within the limit: the model is loaded, and this one does not exist
        with pytest.raises(Exception):
            run_local(Settings(max_batch_lines=limit), source, NO_MODEL, tmp_path / "out", show_progress=False)
        return
    report = run_local(Settings(max_batch_lines=limit), source, NO_MODEL, tmp_path / "out", show_progress=False)
    assert report.batch.status == "failed" and report.batch.errors.data[0].code == code
    assert json.loads((tmp_path / "out" / "batch.json").read_text())["status"] == "failed"
    assert (tmp_path / "out" / "output.jsonl").read_text() == ""


def test_a_file_with_no_json_object_fails_before_the_model_loads(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"{broken\nnot json at all\n")
    report = run_local(Settings(), source, NO_MODEL, tmp_path / "out", show_progress=False)
    assert report.batch.errors.data[0].code == "invalid_file_format"


def test_the_line_bound_counts_every_line_break(tmp_path):
    path = tmp_path / "f"
    for data, expected in ((b"", 0), (b"a", 1), (b"a\n", 1), (b"a\nb", 2), (b"\n\n\n", 3), (b"x\n" * 300_000, 300_000)):
        path.write_bytes(data)
        assert _most_lines(path) == expected
