"""`pagebatch run`: the whole pipeline in one process, no Redis and no S3, results in a directory.

It goes through the same validation, execution and formatting code as the service; only the
plumbing differs (a local file in, a directory out, one engine in this process).
"""
from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from tqdm import tqdm

from jobs.execute import execute
from jobs.ids import new_batch_id
from jobs.openai_format import CHAT
from jobs.results import RequestContext, ShardResult, merge_results
from jobs.schema import ENDPOINTS, BatchError, BatchErrors, BatchRecord
from jobs.settings import Settings
from jobs.validate import (
    FileError,
    Limits,
    RejectedLine,
    ValidLine,
    check_lines,
    check_size,
)
from jobs.worker import EngineOptions, served_name, start_engine

LOCAL_TENANT = "local"


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
              endpoint: str | None = None, options: EngineOptions | None = None, show_progress: bool = True
              ) -> RunReport:
    started = time.perf_counter()
    model = served_name(model_path, name)
    endpoint = endpoint or detect_endpoint(input_path)
    now = int(time.time())
    record = BatchRecord(id=new_batch_id(), tenant=LOCAL_TENANT, endpoint=endpoint, input_file_id=str(input_path),
                         completion_window="24h", created_at=now, expires_at=now + 24 * 3600, model=model)
    ctx = RequestContext(record.id, LOCAL_TENANT, "local")
    limits = Limits(settings.max_batch_bytes, settings.max_batch_lines, settings.max_line_bytes,
                    settings.default_max_tokens)
    rejected, jobs = ShardResult(), []
    try:
        check_size(input_path.stat().st_size, limits)
        with input_path.open("rb") as f:
            lines = (raw.rstrip(b"\r\n") for raw in f)
            for verdict in check_lines(lines, endpoint=endpoint, known_models={model}, limits=limits):
                if isinstance(verdict, RejectedLine):
                    rejected.add_rejected(ctx, verdict)
                else:
                    jobs.append(verdict)
    except FileError as e:
        record.status, record.failed_at = "failed", int(time.time())
        record.errors = BatchErrors(data=[BatchError(code=e.code, message=e.message, line=e.line)])
        _write(out_dir, record, [])
        return RunReport(record, 0.0, 0.0)

    record.request_counts.total = len(jobs) + rejected.failed
    record.status, record.in_progress_at = "in_progress", int(time.time())
    load_started = time.perf_counter()
    loop = start_engine(model_path, options or EngineOptions())
    load_seconds = time.perf_counter() - load_started
    try:
        result = _execute_with_progress(loop, jobs, ctx, endpoint, model, settings, show_progress)
    finally:
        loop.close()
    record.status = "cancelled" if result.stopped else "completed"
    setattr(record, f"{record.status}_at", int(time.time()))
    _write(out_dir, record, [rejected, result])
    # Everything but loading the model: what a long-lived worker does per batch.
    return RunReport(record, load_seconds, time.perf_counter() - started - load_seconds)


def _execute_with_progress(loop: object, jobs: list[ValidLine], ctx: RequestContext, endpoint: str, model: str,
                           settings: Settings, show_progress: bool) -> ShardResult:
    interrupted = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())  # Ctrl-C: abort, keep what finished
    bar = tqdm(total=len(jobs), unit="req", disable=not show_progress, dynamic_ncols=True)

    def progress(completed: int, failed: int) -> None:
        bar.update(completed + failed - bar.n)
        bar.set_postfix(failed=failed, refresh=False)

    try:
        with structlog.contextvars.bound_contextvars(batch_id=ctx.batch_id):
            result = execute(loop, jobs, ctx=ctx, endpoint=endpoint, model_name=model, request_prefix=ctx.batch_id,
                             default_max_tokens=settings.default_max_tokens,
                             should_stop=lambda: "batch_cancelled" if interrupted.is_set() else None,
                             on_progress=progress, poll_s=0.1)
    finally:
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return result


def _write(out_dir: Path, record: BatchRecord, results: list[ShardResult]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with ((out_dir / "output.jsonl").open("w", encoding="utf-8") as output,
          (out_dir / "errors.jsonl").open("w", encoding="utf-8") as errors,
          (out_dir / "usage.jsonl").open("w", encoding="utf-8") as usage):
        merged = merge_results(results, output, errors, usage)
    if record.status != "failed":
        record.request_counts.completed, record.request_counts.failed = merged.completed, merged.failed
        record.usage = merged.totals.as_batch_usage()
        record.output_file_id, record.error_file_id, record.usage_file_id = "output.jsonl", "errors.jsonl", "usage.jsonl"
    (out_dir / "batch.json").write_text(json.dumps(record.public(), indent=2) + "\n", encoding="utf-8")
