"""`execute` with a window: a file of any size keeps only about `window` engine requests in flight, gives the
same results as submitting everything at once, and a stop leaves the lines it never submitted as not run."""
import json
import threading

import pytest

from pagebatch.engine.config import EngineConfig
from pagebatch.engine.loop import EngineLoop
from pagebatch.engine.engine import LLMEngine
from pagebatch.jobs.batch.requests import CHAT, to_engine_request
from pagebatch.jobs.batch.results import RequestContext
from pagebatch.jobs.batch.validate import ValidLine
from pagebatch.jobs.pipeline.execute import execute

CTX = RequestContext("batch_w", "tenant-w", "w")


class CountingLoop:
    """A real EngineLoop that records the most requests it ever had in flight."""

    def __init__(self, loop: EngineLoop) -> None:
        self.loop = loop
        self.in_flight = 0
        self.most = 0
        self.submitted = 0
        self._lock = threading.Lock()

    def submit(self, prompt, params=None, request_id=None, **kwargs):
        with self._lock:
            self.in_flight += 1
            self.submitted += 1
            self.most = max(self.most, self.in_flight)
        future = self.loop.submit(prompt, params, request_id=request_id, **kwargs)
        future.add_done_callback(self._done)
        return future

    def _done(self, _future) -> None:
        with self._lock:
            self.in_flight -= 1

    def abort(self, request_id: str) -> None:
        self.loop.abort(request_id)


@pytest.fixture(scope="module")
def loop(tiny_model):
    loop = EngineLoop(LLMEngine(EngineConfig(model=str(tiny_model), dtype="float32", device="cpu", max_model_len=256,
                                             num_kv_blocks=128, max_num_seqs=4)))
    yield loop
    loop.close()


def lines(count: int) -> list[ValidLine]:
    return [ValidLine(i + 1, f"req-{i + 1}", "m", to_engine_request(
        CHAT, {"messages": [{"role": "user", "content": f"line {i} " * (1 + i % 5)}], "max_tokens": 3,
               "temperature": 0}, default_max_tokens=8)) for i in range(count)]


def bodies(entries) -> dict[str, dict]:
    return {o["custom_id"]: o["response"]["body"]["choices"] for o in (json.loads(text) for _, text in entries)}


def test_a_window_bounds_requests_in_flight_and_changes_no_result(loop):
    jobs = lines(40)
    everything = execute(loop, jobs, ctx=CTX, endpoint=CHAT, model_name="m", request_prefix="all", poll_s=0.05)
    counting = CountingLoop(loop)
    windowed = execute(counting, iter(jobs), ctx=CTX, endpoint=CHAT, model_name="m", request_prefix="win",
                       poll_s=0.05, window=6)
    assert counting.submitted == 40 and counting.most <= 6
    assert windowed.completed == everything.completed == 40 and windowed.failed == 0
    assert bodies(windowed.output) == bodies(everything.output)


def test_a_stop_leaves_unsubmitted_lines_not_run(loop):
    counting = CountingLoop(loop)
    seen = []

    def stop_after_some():
        seen.append(1)
        return "batch_cancelled" if len(seen) > 2 else None

    result = execute(counting, lines(30), ctx=CTX, endpoint=CHAT, model_name="m", request_prefix="stop",
                     should_stop=stop_after_some, poll_s=0.01, window=2)
    assert result.stopped == "batch_cancelled"
    assert counting.submitted < 30 and result.completed + result.failed == 30
    codes = {json.loads(text)["error"]["code"] for _, text in result.errors}
    assert codes == {"batch_cancelled"}
