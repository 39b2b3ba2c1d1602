"""EngineLoop: one thread owns an LLMEngine and steps it; any thread submits, aborts and reads stats.

This is what a service worker keeps alive for hours: requests from many shard tasks share one
continuously batched engine, and each caller gets a Future that resolves when its request finishes.
"""
from __future__ import annotations

import threading
import uuid
from collections import deque
from concurrent.futures import Future

import structlog

from engine.engine import LLMEngine
from engine.inputs import Prompt
from engine.outputs import RequestOutput
from engine.sampling import SamplingParams
from engine.stats import EngineStats

log = structlog.get_logger("pagebatch.engine")


class EngineLoop:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._engine_lock = threading.Lock()
        self._wakeup = threading.Event()
        self._pending: deque[tuple] = deque()
        self._futures: dict[str, Future[RequestOutput]] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pagebatch-engine", daemon=True)
        self._thread.start()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def submit(self, prompt: Prompt, params: SamplingParams | None = None, request_id: str | None = None) -> Future[RequestOutput]:
        request_id = request_id or uuid.uuid4().hex
        future: Future[RequestOutput] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine loop is closed")
            if request_id in self._futures:
                raise ValueError(f"request id {request_id!r} is already in flight")
            self._futures[request_id] = future
            self._pending.append(("add", request_id, prompt, params))
        self._wakeup.set()
        return future

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._pending.append(("abort", request_id))
        self._wakeup.set()

    def stats(self) -> EngineStats:
        with self._engine_lock:
            return self.engine.stats()

    def close(self, timeout: float | None = 30.0) -> None:
        with self._lock:
            self._closed = True
            self._pending.extend(("abort", rid) for rid in list(self._futures))
        self._wakeup.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            self._wakeup.clear()
            with self._lock:
                ops = list(self._pending)
                self._pending.clear()
                closed = self._closed
            with self._engine_lock:
                finished = self._apply(ops)
                if self.engine.has_unfinished_requests():
                    finished += self._step()
            self._resolve(finished)
            if closed and not self.engine.has_unfinished_requests():
                return
            if not self.engine.has_unfinished_requests():
                self._wakeup.wait()

    def _apply(self, ops: list[tuple]) -> list[RequestOutput]:
        finished = []
        for op in ops:
            if op[0] == "add":
                _, request_id, prompt, params = op
                self.engine.add_request(prompt, params, request_id=request_id)
            else:
                out = self.engine.abort_request(op[1])
                if out is not None:
                    finished.append(out)
        return finished

    def _step(self) -> list[RequestOutput]:
        try:
            return self.engine.step()
        except Exception as exc:  # noqa: BLE001 - keep serving: fail what was in flight, not the process
            log.exception("engine step failed; failing the requests in flight", error=str(exc))
            outs = []
            for request_id in list(self.engine.requests):
                out = self.engine.abort_request(request_id)
                if out is not None:
                    out.finish_reason, out.error, out.error_code = "error", f"internal engine error: {exc}", "engine_error"
                    outs.append(out)
            return outs

    def _resolve(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            with self._lock:
                future = self._futures.pop(out.request_id, None)
            if future is not None:
                future.set_result(out)
