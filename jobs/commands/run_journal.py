"""The journal of ``pagebatch run``: every finished line on disk as it finishes, so an interrupted run resumes.

``OUT/journal.jsonl`` starts with a header (the batch record, so a resumed run keeps the batch id that every
line's ids derive from, and the input file's size and SHA-256), then one line per finished request: its
input line number, its output or error line, and its usage record, exactly as the result files will hold
them. Each entry is one ``write`` to a file opened for appending, so a crash, SIGKILL or Ctrl-C leaves every
finished line on disk; a torn last entry (a write cut short) is dropped when the journal is read back. The
file is synced to disk about once a second. Lines a stopped run did not finish (aborted, never started) are
not journaled: a resumed run computes exactly those. A finished run removes its journal.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pagebatch.jobs.batch.results import ShardResult, jsonl_line
from pagebatch.jobs.batch.schema import BatchRecord, UsageRecord
from pagebatch.jobs.batch.spilling_result import SpillingResult
from pagebatch.jobs.pipeline.execute import STOP_MESSAGES

JOURNAL_NAME = "journal.jsonl"
VERSION = 1
SYNC_EVERY_S = 1.0


class JournalError(Exception):
    """Why a run cannot start or resume here; the message says what to do."""


@dataclass(frozen=True)
class InputDigest:
    bytes: int
    sha256: str

    @classmethod
    def of(cls, path: Path) -> "InputDigest":
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return cls(path.stat().st_size, digest.hexdigest())


def journal_path(out_dir: Path) -> Path:
    return out_dir / JOURNAL_NAME


class RunJournal:
    """An open journal (locked, so two runs never write into one directory at once)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd
        self._synced = time.monotonic()

    @classmethod
    def start(cls, out_dir: Path, record: BatchRecord, digest: InputDigest) -> "RunJournal":
        out_dir.mkdir(parents=True, exist_ok=True)
        path = journal_path(out_dir)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        journal = cls(path, _locked(fd, out_dir))
        os.ftruncate(fd, 0)
        header = {"journal": VERSION, "batch": record.model_dump(mode="json"),
                  "input": {"bytes": digest.bytes, "sha256": digest.sha256}}
        journal._write(header)
        os.fsync(fd)
        return journal

    @classmethod
    def resume(cls, out_dir: Path, digest: InputDigest) -> tuple["RunJournal", BatchRecord, ShardResult]:
        """The journal of an interrupted run in ``out_dir``: its batch and the lines it finished."""
        path = journal_path(out_dir)
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
        journal = cls(path, _locked(fd, out_dir))
        try:
            record, finished = journal._read_back(digest)
        except BaseException:
            journal.close()
            raise
        return journal, record, finished

    def _read_back(self, digest: InputDigest) -> tuple[BatchRecord, ShardResult]:
        raw = self.path.read_bytes()
        whole = raw[: raw.rfind(b"\n") + 1]  # a torn last entry (no newline yet) never finished being written
        if len(whole) < len(raw):
            os.ftruncate(self.fd, len(whole))
        entries = whole.splitlines()
        try:
            header = json.loads(entries[0])
            assert header["journal"] == VERSION
            record = BatchRecord.model_validate(header["batch"])
        except (IndexError, ValueError, KeyError, AssertionError):
            raise JournalError(f"{self.path} is not a pagebatch run journal this version can read; remove it to "
                               "start the run over") from None
        if header["input"] != {"bytes": digest.bytes, "sha256": digest.sha256}:
            raise JournalError(f"the input file changed since the run in {self.path.parent} was interrupted; run "
                               f"without --resume into another directory, or remove {self.path} to start over")
        finished = ShardResult()
        for entry in map(json.loads, entries[1:]):
            kind = "output" if "output" in entry else "errors"
            getattr(finished, kind).append((entry["line"], entry[kind]))
            finished.usage.append((entry["line"], entry["usage"]))
            if kind == "output":
                finished.completed += 1
            else:
                finished.failed += 1
        return record, finished

    def append(self, line: int, kind: str, text: str, usage: str) -> None:
        self._write({"line": line, kind: text, "usage": usage})
        if time.monotonic() - self._synced >= SYNC_EVERY_S:
            os.fsync(self.fd)
            self._synced = time.monotonic()

    def _write(self, entry: dict[str, Any]) -> None:
        data = (jsonl_line(entry) + "\n").encode()
        while data:  # one write in practice; a short write is finished, never left torn
            data = data[os.write(self.fd, data):]

    def close(self) -> None:
        if self.fd >= 0:
            try:
                os.fsync(self.fd)
            except OSError:
                pass
            os.close(self.fd)  # closing releases the lock
            self.fd = -1

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _locked(fd: int, out_dir: Path) -> int:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise JournalError(f"another pagebatch run is writing to {out_dir}") from None
        raise
    return fd


class JournaledResult(SpillingResult):
    """A result that writes each finished line to the journal as it is added (and holds a bounded number of them
    in memory: the rest wait for the merge in sorted run files under ``spill_dir``).

    Lines the run stopped before finishing (cancelled by Ctrl-C: aborted or never started) are kept in the
    result, for this run's files, but not journaled, so a resumed run computes them.
    """

    def __init__(self, journal: RunJournal, spill_dir: Path) -> None:
        super().__init__(spill_dir)
        self.journal = journal

    def add_output(self, line: dict[str, Any], usage: UsageRecord) -> None:
        super().add_output(line, usage)
        self._journal("output")

    def add_error(self, line: dict[str, Any], usage: UsageRecord) -> None:
        super().add_error(line, usage)
        if (line.get("error") or {}).get("code") not in STOP_MESSAGES:
            self._journal("errors")

    def _journal(self, kind: str) -> None:
        number, text = getattr(self, kind)[-1]
        self.journal.append(number, kind, text, self.usage[-1][1])
