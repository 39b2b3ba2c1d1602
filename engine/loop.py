"""EngineLoop: one thread owns an LLMEngine and steps it; any thread submits, aborts and reads stats.

This is what a service worker keeps alive for hours: requests from many shard tasks share one
continuously batched engine, and each caller gets a Future that resolves when its request finishes.

``submit`` prepares a request (chat template, tokenization, checks) on the caller's thread, so a
huge or malformed prompt costs its own caller time, never the engine thread's. The engine thread
only admits prepared requests and steps. Every operation it applies is guarded: a failure fails
that request alone. Should the thread itself die, it records why (``fatal_error``), fails every
pending future with ``EngineDeadError``, refuses new work, and ``is_alive()`` turns False so the
worker can exit and health checks can say why.
"""
from __future__ import annotations

import threading
import uuid
from collections import deque
from concurrent.futures import Future, InvalidStateError

import structlog

from pagebatch.engine.engine import LLMEngine
from pagebatch.engine.inputs import Prompt
from pagebatch.engine.outputs import RequestOutput
from pagebatch.engine.pooling import PoolingParams
from pagebatch.engine.request import Request
from pagebatch.engine.request_builder import RequestPlan
from pagebatch.engine.sampling_params import SamplingParams
from pagebatch.engine.stats import EngineStats

log = structlog.get_logger("pagebatch.engine")


class EngineDeadError(RuntimeError):
    """The engine loop's thread died; the message says why. Nothing submitted to it will run."""


class LoopStatus:
    """What any engine loop tells its callers about its health: why it died, and how far it has stepped."""

    _fatal: BaseException | None = None
    _steps: int = 0

    @property
    def fatal_error(self) -> BaseException | None:
        """Why the engine died; None while it runs (or after a clean close)."""
        return self._fatal

    @property
    def steps(self) -> int:
        """Engine steps taken so far: a caller whose requests wait sees the engine move (or not)."""
        return self._steps


class EngineLoop(LoopStatus):
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._engine_lock = threading.Lock()
        self._wakeup = threading.Event()
        self._pending: deque[tuple[str, Request | str]] = deque()  # ("add", request) or ("abort", request id)
        self._futures: dict[str, Future[RequestOutput]] = {}
        self._closed = False
        self._fatal: BaseException | None = None
        self._steps = 0
        self._thread = threading.Thread(target=self._run, name="pagebatch-engine", daemon=True)
        self._thread.start()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def block_size(self) -> int:
        return self.engine.config.block_size

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    def plan_request(self, prompt: Prompt, params: SamplingParams | PoolingParams | None = None) -> RequestPlan:
        """What ``submit`` would tokenize the prompt to and the most tokens the request may generate, on the
        caller's thread; raises RequestRejected where ``submit`` would reject it. Nothing reaches the engine thread."""
        return self.engine.plan_request(prompt, params)

    def is_alive(self) -> bool:
        """True while the engine thread runs and has not failed; False once it died or was closed."""
        return self._fatal is None and self._thread.is_alive()

    def submit(
        self, prompt: Prompt | None, params: SamplingParams | PoolingParams | None = None, request_id: str | None = None,
        fairness_key: str = "", token_ids: list[int] | None = None,
    ) -> Future[RequestOutput]:
        """Prepare the request on this thread and queue it; the Future resolves with its output (an error
        output if it cannot run), or raises EngineDeadError if the engine thread dies first. With PoolingParams
        the request is an embedding: its output's ``embedding`` holds the vector. ``fairness_key`` names whom
        the request is for (a tenant): waiting requests of different keys are admitted fairly by work.
        ``token_ids``: the prompt tokenized already (``RequestBuilder.tokenize``); ``prompt`` is then not read."""
        request_id = request_id or uuid.uuid4().hex
        with self._lock:
            self._check_open(request_id)
        prepared = self.engine.prepare_request(prompt, params, request_id, token_ids)
        if isinstance(prepared, Request):
            prepared.fairness_key = fairness_key
        future: Future[RequestOutput] = Future()
        with self._lock:
            self._check_open(request_id)
            if isinstance(prepared, RequestOutput):  # rejected: it never reaches the engine thread
                future.set_result(prepared)
                return future
            self._futures[request_id] = future
            self._pending.append(("add", prepared))
        self._wakeup.set()
        return future

    def _check_open(self, request_id: str) -> None:
        if self._fatal is not None:
            raise EngineDeadError(f"the engine loop died: {self._fatal!r}") from self._fatal
        if self._closed:
            raise RuntimeError("the engine loop is closed")
        if request_id in self._futures:
            raise ValueError(f"request id {request_id!r} is already in flight")

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._pending.append(("abort", request_id))
        self._wakeup.set()

    def stats(self) -> EngineStats:
        with self._engine_lock:
            return self.engine.stats()

    def serving_path(self) -> dict:
        """The engine's serving path (``LLMEngine.serving_path``) as plain data; fixed once the engine is built."""
        return self.engine.serving_path().as_dict()

    def close(self, timeout: float | None = 30.0) -> None:
        with self._lock:
            self._closed = True
            self._pending.extend(("abort", rid) for rid in list(self._futures))
        self._wakeup.set()
        self._thread.join(timeout)

    # -- the engine thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                self._wakeup.clear()
                with self._lock:
                    ops = list(self._pending)
                    self._pending.clear()
                    closed = self._closed
                with self._engine_lock:
                    finished = apply_ops(self.engine, ops)
                    if self.engine.has_unfinished_requests():
                        self._steps += 1
                        finished += guarded_step(self.engine)
                    busy = self.engine.has_unfinished_requests()
                self._resolve(finished)
                if closed and not busy:
                    return
                if not busy:
                    self._wakeup.wait()
        except BaseException as exc:  # noqa: BLE001 - record it, fail every waiter, never die silently
            self._die(exc)

    def _resolve(self, outputs: list[RequestOutput]) -> None:
        resolve_futures(self._futures, self._lock, outputs)

    def _die(self, exc: BaseException) -> None:
        log.critical("the engine loop died; failing every pending request", error=repr(exc), exc_info=exc)
        with self._lock:
            self._fatal = exc
            futures = list(self._futures.values())
            self._futures.clear()
            self._pending.clear()
        fail_futures(futures, exc)


def apply_ops(engine: LLMEngine, ops: list[tuple[str, Request | RequestOutput | str]]) -> list[RequestOutput]:
    """Admit prepared requests ("add") and abort requests by id ("abort"); an operation that raises fails its
    request alone. Returns the outputs that finished (aborted requests, and failures)."""
    finished = []
    for kind, item in ops:
        request_id = item if isinstance(item, str) else item.request_id
        try:
            if kind == "add":
                engine.admit(item)
            else:
                out = engine.abort_request(request_id)
                if out is not None:
                    finished.append(out)
        except Exception as exc:  # noqa: BLE001 - this request fails alone
            log.exception("engine loop could not apply an operation", op=kind, request_id=request_id)
            # Drop what the engine still holds of it, so its blocks are freed; a second failure here is fatal.
            engine.abort_request(request_id)
            error = f"internal engine error while handling {kind}: {exc!r}"
            finished.append(engine.outputs.rejected(request_id, error, "engine_error"))
    return finished


def guarded_step(engine: LLMEngine) -> list[RequestOutput]:
    """One engine step; should it raise anyway (the step isolates bad requests itself), every request in flight
    finishes with an engine error instead of the loop dying."""
    try:
        return engine.step()
    except Exception as exc:  # noqa: BLE001 - a last resort
        log.exception("engine step failed; failing the requests in flight", error=str(exc))
        outs = []
        for request_id in list(engine.requests):
            out = engine.abort_request(request_id)
            if out is not None:
                out.finish_reason, out.error, out.error_code = "error", f"internal engine error: {exc}", "engine_error"
                outs.append(out)
        return outs


def resolve_futures(futures: dict[str, Future], lock: threading.Lock, outputs: list[RequestOutput]) -> None:
    """Each output's future (taken out of ``futures`` under ``lock``) resolves with it."""
    for out in outputs:
        with lock:
            future = futures.pop(out.request_id, None)
        if future is not None:
            try:
                future.set_result(out)
            except InvalidStateError:  # the caller cancelled it
                pass


def fail_futures(futures: list[Future], cause: BaseException) -> None:
    """Every future raises EngineDeadError, caused by ``cause``."""
    error = EngineDeadError(f"the engine loop died: {cause!r}")
    error.__cause__ = cause
    for future in futures:
        try:
            future.set_exception(error)
        except InvalidStateError:
            pass
