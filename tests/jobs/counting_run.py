"""`pagebatch run`, with a record of every request its engine finishes: what tests/jobs/test_run_resume.py counts.

Each finished engine request appends "<request id> <finish reason>" to the file named by PAGEBATCH_TEST_FINISHED,
one write per line, so a SIGKILL leaves every record but the one being written. The engine itself runs as usual.
A request counts when its result reaches `pagebatch run`'s process (the engine core's process, which imports this
module as __mp_main__, records nothing).
"""
from __future__ import annotations

import os
import sys

from pagebatch.engine.core_client import EngineCoreClient
from pagebatch.engine.loop import EngineLoop
from pagebatch.jobs.commands.cli import main


def _counting(submit):
    def counted_submit(self, prompt, params=None, request_id=None, **kwargs):
        return _count(submit(self, prompt, params, request_id, **kwargs), request_id)
    return counted_submit


def _count(future, request_id):
    def finished(done) -> None:
        if not done.cancelled() and done.exception() is None:
            os.write(_record, f"{request_id} {done.result().finish_reason}\n".encode())

    future.add_done_callback(finished)
    return future


if __name__ == "__main__":
    _record = os.open(os.environ["PAGEBATCH_TEST_FINISHED"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    EngineLoop.submit = _counting(EngineLoop.submit)
    EngineCoreClient.submit = _counting(EngineCoreClient.submit)
    sys.exit(main(sys.argv[1:]))
