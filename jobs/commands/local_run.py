"""`pagebatch run`: the whole pipeline in one process, no Redis and no S3, results in a directory.

It goes through the same validation, execution and formatting code as the service; only the
plumbing differs (a local file in, a directory out, one engine in this process). Each line reaches
the run's journal as it finishes (jobs/commands/run_journal.py), so ``--resume`` continues an
interrupted run without computing a finished line again, and ends with the files an uninterrupted run writes.
"""
from __future__ import annotations

import json
import signal
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog
from tqdm import tqdm

from pagebatch.jobs.batch import lifecycle
from pagebatch.jobs.batch.conclusion import RESULT_KINDS, conclude, write_result_files
from pagebatch.jobs.batch.ids import new_batch_id
from pagebatch.jobs.batch.lifecycle import Event
from pagebatch.jobs.batch.schema import CHAT
from pagebatch.jobs.batch.merge import MergedCounts, loaded
from pagebatch.jobs.batch.results import RequestContext, ShardResult
from pagebatch.jobs.batch.schema import ENDPOINTS, BatchError, BatchErrors, BatchRecord
from pagebatch.jobs.batch.validate import FileError, Limits, RejectedLine, ValidLine, check_lines, check_size
from pagebatch.jobs.commands.run_journal import InputDigest, JournaledResult, JournalError, RunJournal, journal_path
from pagebatch.jobs.engine_host import EngineHandle, EngineOptions, served_name, start_engine
from pagebatch.jobs.logs import configure_logging
from pagebatch.jobs.pipeline.execute import execute
from pagebatch.jobs.settings import Settings

LOCAL_TENANT = "local"
# Engine requests in flight per engine slot: enough that the scheduler always finds its next requests
# prepared, few enough that a million-line file costs neither the engine's queue nor its memory.
WINDOW_PER_SEQ = 4


@dataclass
class RunReport:
    batch: BatchRecord
    load_seconds: float
    run_seconds: float  # validation, generation and writing the results: all but loading the model

    @property
    def generated_tokens(self) -> int:
        return self.batch.usage.output_tokens if self.batch.usage else 0


def detect_endpoint(path: Path) -> str:
    """The first line's url if it names a supported endpoint, else chat completions."""
    with path.open("rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    url = json.loads(raw).get("url")
                except (ValueError, AttributeError):
                    return CHAT
                return url if url in ENDPOINTS else CHAT
    return CHAT


def run_local(settings: Settings, input_path: Path, model_path: str, out_dir: Path, *, name: str | None = None,
              endpoint: str | None = None, options: EngineOptions | None = None, show_progress: bool = True,
              resume: bool = False) -> RunReport:
    """Run ``input_path`` into ``out_dir``. ``resume``: continue the interrupted run whose journal ``out_dir`` holds
    (without one, start afresh); without it, a journal there is refused rather than overwritten."""
    started = time.perf_counter()
    model = served_name(model_path, name)
    digest = InputDigest.of(input_path)
    journal: RunJournal | None = None
    finished = ShardResult()  # lines an interrupted run finished already
    if journal_path(out_dir).exists():
        if not resume:
            raise JournalError(f"{out_dir} holds an unfinished run ({journal_path(out_dir).name}); pass --resume to "
                               "continue it, or choose another --out")
        journal, record, finished = RunJournal.resume(out_dir, digest)
        if record.model != model or (endpoint is not None and endpoint != record.endpoint):
            journal.close()
            raise JournalError(f"the run in {out_dir} used model {record.model} and endpoint {record.endpoint}; "
                               "resume it with the same ones")
        endpoint = record.endpoint
    else:
        endpoint = endpoint or detect_endpoint(input_path)
        now = int(time.time())
        record = BatchRecord(id=new_batch_id(), tenant=LOCAL_TENANT, endpoint=endpoint, input_file_id=str(input_path),
                             completion_window="24h", created_at=now, expires_at=now + 24 * 3600, model=model)
    try:
        return _run(settings, input_path, model_path, out_dir, record, finished, journal, digest, name, options,
                    show_progress, started)
    finally:
        if journal is not None:
            journal.close()


def _run(settings: Settings, input_path: Path, model_path: str, out_dir: Path, record: BatchRecord,
         finished: ShardResult, journal: RunJournal | None, digest: InputDigest, name: str | None,
         options: EngineOptions | None, show_progress: bool, started: float) -> RunReport:
    endpoint, model = record.endpoint, record.model or ""
    ctx = RequestContext(record.id, LOCAL_TENANT, "local")
    limits = Limits(settings.max_batch_bytes, settings.max_batch_lines, settings.max_line_bytes,
                    settings.default_max_tokens)
    done_lines = {line for line, _ in finished.usage}
    rejected = ShardResult()
    most_lines = _most_lines(input_path)
    valid = ValidLines(input_path, endpoint, model, limits, ctx, rejected, skip=done_lines)
    try:
        check_size(input_path.stat().st_size, limits)
        if most_lines > limits.max_batch_lines:  # perhaps too many: find out before running any of them
            for _ in check_lines(_file_lines(input_path), endpoint=endpoint, known_models={model}, limits=limits):
                pass
        valid.read_first()  # an empty file, or one with no JSON object, fails here: before the model loads
    except FileError as e:
        valid.close()
        return _fail_file(record, e, out_dir, journal)

    lifecycle.apply(record, Event.START)
    journal = journal or RunJournal.start(out_dir, record, digest)
    try:
        load_started = time.perf_counter()
        options = options or EngineOptions()
        loop = start_engine(model_path, options, settings.kernels, settings.cache_dir, name,
                            initializer=(configure_logging, (settings.log_level, settings.log_format)))
        load_seconds = time.perf_counter() - load_started
        with tempfile.TemporaryDirectory(prefix=".spill-", dir=out_dir) as spill_dir:
            try:
                # Lines are validated as the engine asks for more: the file is read once, and never held whole.
                result = _execute_with_progress(loop, valid, ctx, endpoint, model, show_progress,
                                                window=WINDOW_PER_SEQ * options.max_num_seqs,
                                                result=JournaledResult(journal, Path(spill_dir)),
                                                total=max(0, most_lines - len(done_lines)), already=len(done_lines))
            finally:
                loop.close()
                valid.close()
            if valid.error is not None:
                journal.remove()
                return _fail_file(record, valid.error, out_dir, None)
            record.request_counts.total = valid.count + len(done_lines) + rejected.failed
            record.cancel_requested = result.stopped == "batch_cancelled"
            lifecycle.apply(record, Event.FINALIZE)
            merged: MergedCounts = write_result_files([loaded(rejected), loaded(finished), loaded(result)], out_dir)
        lifecycle.apply(record, conclude(record, merged, {kind: f"{kind}.jsonl" for kind in RESULT_KINDS}))
        _write_batch_json(out_dir, record)
        if result.stopped is None:
            journal.remove()  # finished: the result files hold everything
    finally:
        journal.close()
    # Everything but loading the model: what a long-lived worker does per batch.
    return RunReport(record, load_seconds, time.perf_counter() - started - load_seconds)


class ValidLines:
    """The lines of the input file to run, validated as they are asked for; rejected lines go to ``rejected``,
    lines in ``skip`` (finished by an interrupted run) are passed over. A FileError met while iterating ends the
    lines and is kept in ``error``."""

    def __init__(self, path: Path, endpoint: str, model: str, limits: Limits, ctx: RequestContext,
                 rejected: ShardResult, skip: set[int]) -> None:
        self._lines = _file_lines(path)
        self._verdicts = check_lines(self._lines, endpoint=endpoint, known_models={model}, limits=limits)
        self.ctx, self.rejected, self.skip = ctx, rejected, skip
        self.count = 0  # lines handed out to run
        self.error: FileError | None = None
        self._first: ValidLine | None = None

    def read_first(self) -> None:
        """Read up to the first line to run; FileError if the file is empty or holds no JSON object."""
        self._first = self._next()

    def _next(self) -> ValidLine | None:
        for verdict in self._verdicts:
            if isinstance(verdict, RejectedLine):
                self.rejected.add_rejected(self.ctx, verdict)
            elif verdict.line not in self.skip:
                self.count += 1
                return verdict
        return None

    def __iter__(self) -> Iterator[ValidLine]:
        job, self._first = self._first, None
        try:
            while job is not None:
                yield job
                job = self._next()
        except FileError as e:
            self.error = e

    def close(self) -> None:
        self._lines.close()  # closes the file, read or not


def _file_lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        for raw in f:
            yield raw.rstrip(b"\r\n")


def _most_lines(path: Path) -> int:
    """An upper bound on the file's requests, from its line breaks (counted a MiB at a time)."""
    count, last = 0, b"\n"
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def _fail_file(record: BatchRecord, error: FileError, out_dir: Path, journal: RunJournal | None) -> RunReport:
    record.errors = BatchErrors(data=[BatchError(code=error.code, message=error.message, line=error.line)])
    lifecycle.apply(record, Event.FAIL)
    write_result_files([], out_dir)
    _write_batch_json(out_dir, record)
    if journal is not None:
        journal.remove()
    return RunReport(record, 0.0, 0.0)


def _execute_with_progress(loop: EngineHandle, jobs: Iterable[ValidLine], ctx: RequestContext, endpoint: str,
                           model: str, show_progress: bool, window: int, result: ShardResult, total: int,
                           already: int = 0) -> ShardResult:
    interrupted = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())  # Ctrl-C: abort, keep what finished
    bar = tqdm(total=total + already, initial=already, unit="req", disable=not show_progress, dynamic_ncols=True)

    def progress(completed: int, failed: int) -> None:
        bar.update(already + completed + failed - bar.n)
        bar.set_postfix(failed=failed, refresh=False)

    try:
        with structlog.contextvars.bound_contextvars(batch_id=ctx.batch_id):
            result = execute(loop, jobs, ctx=ctx, endpoint=endpoint, model_name=model, request_prefix=ctx.batch_id,
                             should_stop=lambda: "batch_cancelled" if interrupted.is_set() else None,
                             on_progress=progress, poll_s=0.1, window=window, result=result)
    finally:
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return result


def _write_batch_json(out_dir: Path, record: BatchRecord) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "batch.json").write_text(json.dumps(record.public(), indent=2) + "\n", encoding="utf-8")
