"""The engine core's own process: the model, the KV cache, the scheduler and the steps, and nothing else.

``EngineCoreClient`` (engine/core_client.py) starts it with ``multiprocessing``'s spawn and talks to it over one
pipe. The client renders and tokenizes prompts and builds results on its side, so a worker's shard threads and
the engine's forward passes run on two cores instead of taking turns on one interpreter lock.

Messages, client to core: ``("submit", [(request_id, token_ids, params, fairness_key), ...])``,
``("abort", request_id)``, ``("stats", nonce)``, ``("close",)``. Core to client: ``("ready", CoreInfo)`` or
``("failed", reason)`` once, then ``("outputs", [RequestOutput, ...], steps)``, ``("stats", nonce, EngineStats)``,
``("dead", reason)`` when the engine thread died, and ``("closed",)`` last. A client that goes away (its end
of the pipe closes) makes the core close its engine and exit.
"""
from __future__ import annotations

import os
import queue
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from pagebatch.engine.config import EngineConfig
from pagebatch.engine.models.pooling_config import ModelPooling

TICK_S = 0.5  # with requests running but none finishing, the step count still reaches the client this often


@dataclass(frozen=True)
class CoreInfo:
    """What the client needs to prepare requests exactly as the core would: the core's checks, sized from its model."""

    vocab_size: int
    max_model_len: int
    num_blocks: int
    block_size: int
    eos_token_ids: frozenset[int]
    pooling: ModelPooling | None
    generates: bool
    serving_path: dict


Initializer = tuple[Callable[..., Any], tuple[Any, ...]] | None  # run first in the core (its logging, say)


def serve(config: EngineConfig, conn: Connection, initializer: Initializer = None) -> None:
    """The core process's main: load the engine, then serve the pipe until the client closes it or goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the client, which closes the core
    if initializer is not None:
        initializer[0](*initializer[1])
    from pagebatch.engine.engine import LLMEngine
    from pagebatch.engine.loop import EngineLoop

    try:
        engine = LLMEngine(config)
    except BaseException as exc:  # noqa: BLE001 - the client raises it as the reason the engine could not start
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", CoreInfo(engine.spec.vocab_size, engine.max_model_len, engine.num_blocks,
                                 config.block_size, frozenset(engine.eos_token_ids), engine.pooling,
                                 engine.model.lm_head is not None, engine.serving_path().as_dict())))
    _Core(EngineLoop(engine), conn).run()
    os._exit(0)  # without waiting on library threads: everything the client needs was sent


class _Core:
    def __init__(self, loop: Any, conn: Connection) -> None:
        self.loop, self.conn = loop, conn
        self.outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.sender = threading.Thread(target=self._send_forever, name="pagebatch-core-sender", daemon=True)

    def run(self) -> None:
        self.sender.start()
        try:
            while True:
                message = self.conn.recv()
                kind = message[0]
                if kind == "submit":
                    for request_id, token_ids, params, fairness_key in message[1]:
                        self._submit(request_id, token_ids, params, fairness_key)
                elif kind == "abort":
                    self.loop.abort(message[1])
                elif kind == "stats":
                    self.outbox.put(("stats", message[1], self.loop.stats()))
                elif kind == "close":
                    break
        except (EOFError, OSError):  # the client is gone: nobody is left to send results to
            pass
        self.loop.close()  # aborts what is still in flight; their outputs are sent before "closed"
        self.outbox.put(None)
        self.sender.join(30)

    def _submit(self, request_id: str, token_ids: list[int], params: Any, fairness_key: str) -> None:
        try:
            future = self.loop.submit(None, params, request_id=request_id, fairness_key=fairness_key,
                                      token_ids=token_ids)
        except Exception as exc:  # noqa: BLE001 - a dead or closed loop: the client learns it from "dead"
            self.outbox.put(("dead", repr(exc)))
            return
        future.add_done_callback(self._finished)

    def _finished(self, future: Any) -> None:
        error = future.exception()
        self.outbox.put(("dead", repr(self.loop.fatal_error or error)) if error is not None else future.result())

    def _send_forever(self) -> None:
        steps_sent = -1
        try:
            while True:
                try:
                    first = self.outbox.get(timeout=TICK_S)
                except queue.Empty:
                    if self.loop.steps != steps_sent:
                        steps_sent = self.loop.steps
                        self.conn.send(("outputs", [], steps_sent))
                    continue
                items = [first]
                while True:  # whatever finished meanwhile goes in the same message
                    try:
                        items.append(self.outbox.get_nowait())
                    except queue.Empty:
                        break
                outputs = [item for item in items if item is not None and not isinstance(item, tuple)]
                steps_sent = self.loop.steps
                if outputs:
                    self.conn.send(("outputs", outputs, steps_sent))
                for item in items:
                    if isinstance(item, tuple):
                        self.conn.send(item)
                if None in items:
                    self.conn.send(("closed",))
                    return
        except (EOFError, OSError, BrokenPipeError):
            return
