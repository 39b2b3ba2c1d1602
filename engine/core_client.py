"""EngineCoreClient: an EngineLoop whose engine steps in a process of its own (engine/core_process.py).

The client keeps what is per request and Python-heavy: the chat template, the tokenizer and every check a
prompt gets (the same RequestBuilder, sized by the core's model), and the futures its callers wait on. The core
keeps the model, the KV cache and the scheduler. So on a CPU worker the shard threads (parse, template,
tokenize, results, storage) run on one core while the engine's steps run on another, instead of sharing one
interpreter lock; on a GPU the steps' kernel launches never wait behind a tokenizer.

Its surface is EngineLoop's (submit, abort, stats, plan_request, steps, is_alive, fatal_error, close), and its
failure rules are the same: a request that cannot run resolves with its error output, and when the core dies
(its process exits, or its loop fails) every pending future raises EngineDeadError and the client
refuses new work.
"""
from __future__ import annotations

import itertools
import multiprocessing
import threading
import uuid
from concurrent.futures import Future
from typing import Any

import structlog

from pagebatch.engine.config import EngineConfig
from pagebatch.engine.core_process import CoreInfo, Initializer, serve
from pagebatch.engine.engine import prepared_or_rejected
from pagebatch.engine.inputs import Prompt
from pagebatch.engine.loop import EngineDeadError, LoopStatus, fail_futures, resolve_futures
from pagebatch.engine.models import resolve_checkpoint
from pagebatch.engine.output_builder import OutputBuilder
from pagebatch.engine.outputs import RequestOutput
from pagebatch.engine.pooling import PoolingParams
from pagebatch.engine.request_builder import RequestBuilder, RequestPlan
from pagebatch.engine.sampling_params import SamplingParams
from pagebatch.engine.stats import EngineStats

log = structlog.get_logger("pagebatch.engine")

STATS_TIMEOUT_S = 30.0


class EngineCoreClient(LoopStatus):
    def __init__(self, config: EngineConfig, initializer: Initializer = None) -> None:
        """Start the core (it loads the model) and, meanwhile, this side's tokenizer; returns once the core is
        ready. RuntimeError with the core's reason if it could not start."""
        from transformers import AutoTokenizer

        context = multiprocessing.get_context("spawn")  # never fork a process that holds threads or a GPU context
        self._conn, child = context.Pipe()
        self._process = context.Process(target=serve, args=(config, child, initializer), name="pagebatch-engine-core",
                                        daemon=True)
        self._process.start()
        child.close()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(resolve_checkpoint(config.model)))
        except Exception as exc:  # the core's reason, when it has one, says more
            tokenizer_error = exc
        else:
            tokenizer_error = None
        try:
            kind, info = self._conn.recv()
        except EOFError:
            info, kind = f"its process exited with code {self._exit_code()}", "failed"
        if kind == "ready" and tokenizer_error is not None:
            self._conn.send(("close",))
            kind, info = "failed", f"the tokenizer could not be loaded: {tokenizer_error}"
        if kind != "ready":
            self._process.join(10)
            if self._process.is_alive():
                self._process.terminate()
            raise RuntimeError(f"the engine core could not start: {info}")
        self.info: CoreInfo = info
        self.builder = RequestBuilder(self.tokenizer, info.vocab_size, info.max_model_len, info.num_blocks,
                                      info.block_size, set(info.eos_token_ids), _cpu(), config.seed,
                                      pooling=info.pooling, generates=info.generates)
        self.outputs = OutputBuilder(self.tokenizer)
        self._lock = threading.Lock()  # the futures, the stats waiters and the outbox
        # Messages wait here for the sender thread, which sends what piled up meanwhile as one message: a shard's
        # requests cross the pipe in a few messages, not one each (each costs both processes a wakeup).
        self._outbox: list[tuple] = []
        self._outbox_filled = threading.Condition(self._lock)
        self._futures: dict[str, Future[RequestOutput]] = {}
        self._stats: dict[int, Future[EngineStats]] = {}
        self._nonces = itertools.count()
        self._closed = False
        self._fatal: BaseException | None = None
        self._steps = 0
        self._receiver = threading.Thread(target=self._receive, name="pagebatch-core-receiver", daemon=True)
        self._sender = threading.Thread(target=self._send_forever, name="pagebatch-core-sender", daemon=True)
        self._receiver.start()
        self._sender.start()

    # -- the EngineLoop surface ----------------------------------------------------------------------------
    @property
    def block_size(self) -> int:
        return self.info.block_size

    @property
    def max_model_len(self) -> int:
        return self.info.max_model_len

    def is_alive(self) -> bool:
        return self._fatal is None and self._process.is_alive() and self._receiver.is_alive()

    def plan_request(self, prompt: Prompt, params: SamplingParams | PoolingParams | None = None) -> RequestPlan:
        return self.builder.plan(prompt, params if params is not None else SamplingParams())

    def serving_path(self) -> dict:
        return dict(self.info.serving_path)

    def submit(self, prompt: Prompt, params: SamplingParams | PoolingParams | None = None,
               request_id: str | None = None, fairness_key: str = "") -> Future[RequestOutput]:
        """Template and tokenize here, run in the core; the Future resolves as EngineLoop.submit's does."""
        request_id = request_id or uuid.uuid4().hex
        params = params if params is not None else SamplingParams()
        with self._lock:
            self._check_open(request_id)
        token_ids = prepared_or_rejected(lambda: self.builder.tokenize(prompt, params), self.outputs, request_id,
                                         params)
        future: Future[RequestOutput] = Future()
        if isinstance(token_ids, RequestOutput):  # rejected here: the core never sees it
            future.set_result(token_ids)
            return future
        with self._lock:
            self._check_open(request_id)
            self._futures[request_id] = future
            self._send(("submit", [(request_id, token_ids, params, fairness_key)]))
        return future

    def abort(self, request_id: str) -> None:
        with self._lock:
            if self._fatal is None and not self._closed:
                self._send(("abort", request_id))

    def stats(self) -> EngineStats:
        waiter: Future[EngineStats] = Future()
        with self._lock:
            self._check_open("")
            nonce = next(self._nonces)
            self._stats[nonce] = waiter
            self._send(("stats", nonce))
        try:
            return waiter.result(STATS_TIMEOUT_S)
        finally:
            with self._lock:
                self._stats.pop(nonce, None)

    def close(self, timeout: float | None = 30.0) -> None:
        with self._lock:
            already, self._closed = self._closed, True
            if not already and self._fatal is None:
                self._send(("close",))
        self._sender.join(timeout)
        self._receiver.join(timeout)
        self._process.join(5)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)

    # -- this side's bookkeeping ---------------------------------------------------------------------------
    def _check_open(self, request_id: str) -> None:
        if self._fatal is not None:
            raise EngineDeadError(f"the engine loop died: {self._fatal!r}") from self._fatal
        if self._closed:
            raise RuntimeError("the engine loop is closed")
        if request_id and request_id in self._futures:
            raise ValueError(f"request id {request_id!r} is already in flight")

    def _send(self, message: tuple) -> None:  # holding self._lock
        self._outbox.append(message)
        self._outbox_filled.notify()

    def _send_forever(self) -> None:
        while True:
            with self._lock:
                while not self._outbox:
                    self._outbox_filled.wait()
                waiting, self._outbox = self._outbox, []
            try:
                for message in _merged(waiting):
                    self._conn.send(message)
            except (OSError, ValueError) as exc:  # the core's end is gone
                self._die(RuntimeError(f"the engine core is gone: {exc!r}"))
                return
            if any(message[0] == "close" for message in waiting):
                return

    def _receive(self) -> None:
        reason: str | None = None
        try:
            while True:
                message = self._conn.recv()
                kind = message[0]
                if kind == "outputs":
                    self._steps = message[2]
                    self._resolve(message[1])
                elif kind == "stats":
                    with self._lock:
                        waiter = self._stats.get(message[1])
                    if waiter is not None and not waiter.done():
                        waiter.set_result(message[2])
                elif kind == "dead":
                    reason = f"the engine core's loop died: {message[1]}"
                    break
                elif kind == "closed":
                    self._die(RuntimeError("the engine core closed"))  # fails nothing unless something still waits
                    return
        except (EOFError, OSError):
            reason = f"the engine core's process exited (code {self._exit_code()})"
        self._die(RuntimeError(reason or "the engine core stopped"))

    def _exit_code(self) -> int | None:
        self._process.join(5)
        return self._process.exitcode

    def _resolve(self, outputs: list[RequestOutput]) -> None:
        resolve_futures(self._futures, self._lock, outputs)

    def _die(self, exc: BaseException) -> None:
        with self._lock:
            if self._closed and not self._futures:
                return
            log.critical("the engine core died; failing every pending request", error=str(exc))
            self._fatal = exc
            waiting = list(self._futures.values()) + list(self._stats.values())
            self._futures.clear()
        fail_futures(waiting, exc)


def _merged(messages: list[tuple]) -> list[tuple]:
    """Consecutive submits as one; everything keeps its order (an abort never overtakes its request's submit)."""
    out: list[tuple] = []
    for message in messages:
        if message[0] == "submit" and out and out[-1][0] == "submit":
            out[-1][1].extend(message[1])
        else:
            out.append(message)
    return out


def _cpu() -> Any:
    import torch

    return torch.device("cpu")  # plans only: the generators requests sample with are built in the core
