"""Restarts and stalls cost no line, on the real stack: a batch stopped before anyone prepared it reports every
line; a batch created right after Redis lost everything is validated against the same models; a worker that
is connected but stuck loses its shard to another worker."""
import sys
import textwrap
import time

import redis

from tests.batch_helpers import chat_line, jsonl, read_jsonl, submit, upload, wait_status
from tests.service_fixtures import Process, wait_for

GHOST = "ghost-model"  # a model some worker served once; none serves it now


def test_batches_stopped_before_prepare_report_every_line_then_a_redis_wipe_rejects_nothing(make_stack):
    stack = make_stack(PAGEBATCH_VISIBILITY_TIMEOUT="3")
    r = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    r.sadd("pb:models", GHOST)
    client = stack.client("d")

    # No worker at all: nobody prepares. One batch expires, one is cancelled; each line is still reported.
    lines = [chat_line("a", GHOST), '{"custom_id": "broken", "method": ', chat_line("b", "whatever-model")]
    expiring = client.batches.create(input_file_id=upload(client, jsonl(lines)).id, endpoint="/v1/chat/completions",
                                     completion_window="2s")
    cancelled = submit(client, lines)
    assert client.batches.cancel(cancelled.id).status == "cancelling"
    for batch, code in ((expiring, "batch_expired"), (cancelled, "batch_cancelled")):
        batch = wait_status(client, batch.id, timeout=60, logs=stack.logs)
        assert batch.status == code.removeprefix("batch_")
        assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (3, 0, 3)
        errors = read_jsonl(client, batch.error_file_id)
        assert [e["custom_id"] for e in errors] == ["a", "broken", "b"]
        assert {e["error"]["code"] for e in errors} == {code}
        assert len(read_jsonl(client, batch.to_dict()["usage_file_id"])) == 3

    # Redis restarts without its data: the models set is gone until workers beat again. A batch created at once
    # is validated against the models served before (refilled from storage), not rejected as unknown.
    stack.start_worker()
    warm = submit(client, [chat_line("warm", stack.model)])
    assert wait_status(client, warm.id, logs=stack.logs).status == "completed"
    stack.redis.restart()
    assert not r.exists("pb:models")
    right_after = wait_for(lambda: submit(client, [chat_line(f"r{i}", stack.model) for i in range(4)]), 30,
                           "the API to answer after the restart")
    batch = wait_status(client, right_after.id, timeout=90, logs=stack.logs)
    errors = read_jsonl(client, batch.error_file_id)
    assert not errors, errors
    assert (batch.status, batch.request_counts.completed) == ("completed", 4)


HANGING_WORKER = textwrap.dedent("""
    # The patch runs at import, so it also applies in the engine core's process (spawn imports this script there
    # as __mp_main__, where the guarded main() does not run); the flag comes by environment, which both see.
    import os, pathlib, sys, threading
    from pagebatch.engine.engine import LLMEngine
    flag = pathlib.Path(os.environ["WEDGE_FLAG"])
    real_step = LLMEngine.step
    def step(self):
        if flag.exists():
            threading.Event().wait()  # a step that never returns: the engine is wedged, the process is fine
        return real_step(self)
    LLMEngine.step = step
    if __name__ == "__main__":
        from pagebatch.jobs.commands.cli import main
        sys.exit(main())
""")


def test_a_connected_but_stuck_worker_loses_its_shard_to_another(make_stack, tmp_path):
    stack = make_stack(PAGEBATCH_VISIBILITY_TIMEOUT="3")
    flag = tmp_path / "wedge"
    flag.touch()
    script = tmp_path / "hanging_worker.py"
    script.write_text(HANGING_WORKER)
    wedged = Process(["worker", "--model", str(stack.model_path), "--concurrency", "1"], stack.env,
                     stack.logdir / "wedged-worker.log")
    wedged.start = lambda: _start_script(wedged, script, flag)  # the same worker, its engine's step patched
    wedged.start()
    stack.workers.append(wedged)
    stack.wait_worker_ready(wedged)
    r = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    client = stack.client("d")
    batch = submit(client, [chat_line(f"s{i}", stack.model, max_tokens=4) for i in range(3)])
    wait_for(lambda: r.hget(f"pb:batch:{batch.id}:attempts", "0") == "1", 30, "the wedged worker to take the shard")

    started = time.monotonic()
    stack.start_worker()
    batch = wait_status(client, batch.id, timeout=60, logs=stack.logs)
    moved_after = time.monotonic() - started
    print(f"the stuck worker's shard completed on another worker {moved_after:.1f}s after that worker started")
    assert batch.status == "completed" and batch.request_counts.completed == 3
    assert r.hget(f"pb:batch:{batch.id}:attempts", "0") == "2"
    assert wedged.alive()  # connected all along: only its lease stopped being renewed
    assert "made no progress" in wedged.log.read_text()
    wedged.kill()  # its task never ends, so a polite stop would wait for nothing


def _start_script(process: Process, script, flag) -> Process:
    import subprocess

    process.log.parent.mkdir(parents=True, exist_ok=True)
    with process.log.open("ab") as out:
        process.proc = subprocess.Popen([sys.executable, str(script), *process.args], env={**process.env, "WEDGE_FLAG": str(flag)},
                                        stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return process

