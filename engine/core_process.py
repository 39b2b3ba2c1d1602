"""The engine core's own process: the model, the KV cache, the scheduler and the steps, and nothing else.

``EngineCoreClient`` (engine/core_client.py) starts it with ``multiprocessing``'s spawn and talks to it over one
pipe. The client renders and tokenizes prompts and builds results on its side, so a worker's shard threads and
the engine's forward passes run on two cores instead of taking turns on one interpreter lock.

Messages, client to core: ``("submit", [(request_id, token_ids, params, fairness_key), ...])``,
``("abort", request_id)``, ``("stats", nonce)``, ``("close",)``. Core to client: ``("ready", CoreInfo)`` or
``("failed", reason)`` once, then ``("outputs", [RequestOutput, ...], steps)``, ``("stats", nonce, EngineStats)``,
``("dead", reason)`` when its loop failed, and ``("closed",)`` last. A client that goes away (its end
of the pipe closes) makes the core exit.
"""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from pagebatch.engine.config import EngineConfig
from pagebatch.engine.engine import LLMEngine
from pagebatch.engine.loop import apply_ops, guarded_step
from pagebatch.engine.models.pooling_config import ModelPooling
from pagebatch.engine.native_memory import (MMAP_THRESHOLD_BYTES, bound_matmul_caches, cache_large_blocks,
                                            limit_arenas, release_free_memory)
from pagebatch.engine.request import Request

TICK_S = 0.5  # with requests running but none finishing, the step count still reaches the client this often
TRIM_S = 10.0  # how often freed memory goes back to the system


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
    limit_arenas(map_from=MMAP_THRESHOLD_BYTES)  # before any thread starts (engine/native_memory.py)
    bound_matmul_caches()  # before the first matmul
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the client, which closes the core
    if initializer is not None:
        initializer[0](*initializer[1])
    try:
        engine = LLMEngine(config)
    except BaseException as exc:  # noqa: BLE001 - the client raises it as the reason the engine could not start
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    if engine.model.device.type == "cpu":
        cache_large_blocks()  # the steps' activations, after the weights and the KV pool (engine/native_memory.py)
    conn.send(("ready", CoreInfo(engine.spec.vocab_size, engine.max_model_len, engine.num_blocks,
                                 config.block_size, frozenset(engine.eos_token_ids), engine.pooling,
                                 engine.model.lm_head is not None, engine.serving_path().as_dict())))
    try:
        _Core(engine, conn).run()
    except (EOFError, OSError):  # the client is gone: nobody is left to send results to
        pass
    except BaseException as exc:  # noqa: BLE001 - the client fails what waits, with the reason
        try:
            conn.send(("dead", f"{type(exc).__name__}: {exc}"))
        except (OSError, ValueError):
            pass
    os._exit(0)  # without waiting on library threads: everything the client needs was sent


class _Core:
    """One thread does everything: read what the client sent, admit it, step, send what finished. Requests are
    built, stepped and freed on the same thread (no interpreter lock to share, and glibc's allocator sees no
    memory freed on another thread than the one that took it)."""

    def __init__(self, engine: Any, conn: Connection) -> None:
        self.engine, self.conn = engine, conn
        self.steps = 0
        self.sent_at = self.trimmed_at = time.monotonic()

    def run(self) -> None:
        engine = self.engine
        while True:
            ops, closing = self._read(wait=not engine.has_unfinished_requests())
            finished = apply_ops(engine, ops)
            if closing:  # what is still in flight is aborted; its outputs (and rejections) go out before "closed"
                finished += apply_ops(engine, [("abort", request_id) for request_id in list(engine.requests)])
                finished += guarded_step(engine)  # nothing left to run: it hands back the rejections only
            elif engine.has_unfinished_requests():
                self.steps += 1
                finished += guarded_step(engine)
            now = time.monotonic()
            if finished or (engine.has_unfinished_requests() and now - self.sent_at > TICK_S):
                self.conn.send(("outputs", finished, self.steps))
                self.sent_at = now
            if closing:
                self.conn.send(("closed",))
                return
            if now - self.trimmed_at > TRIM_S:
                release_free_memory()
                self.trimmed_at = now

    def _read(self, wait: bool) -> tuple[list[tuple], bool]:
        """Every message waiting (idle: the first one waited for, up to TICK_S); the operations they make, and
        whether the client asked to close."""
        ops: list[tuple] = []
        timeout = TICK_S if wait else 0
        while self.conn.poll(timeout):
            message = self.conn.recv()
            timeout = 0
            kind = message[0]
            if kind == "submit":
                for request_id, token_ids, params, fairness_key in message[1]:
                    prepared = self.engine.prepare_request(None, params, request_id, token_ids)
                    if isinstance(prepared, Request):
                        prepared.fairness_key = fairness_key
                    ops.append(("add", prepared))
            elif kind == "abort":
                ops.append(("abort", message[1]))
            elif kind == "stats":
                self.conn.send(("stats", message[1], self.engine.stats()))
            elif kind == "close":
                return ops, True
        return ops, False
