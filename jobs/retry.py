"""Riding out a dependency outage: retry with exponential backoff and full jitter until a deadline.

A storage or broker hiccup delays work; it never fails a request. Only the batch's own deadline
(its completion window) ends the waiting, and then the last error is raised.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from pagebatch.jobs.errors import OUTAGE_ERRORS, is_outage
from pagebatch.jobs.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")
REPORT_EVERY_S = 1.0  # well under any visibility timeout (>= 3 s), which a silent wait must not outlast


def backoff_delays(base_s: float = 0.5, cap_s: float = 30.0, rng: random.Random | None = None):
    """Endless delays: full jitter over an exponentially growing ceiling (AWS's "full jitter")."""
    rng = rng or random.Random()
    ceiling = base_s
    while True:
        yield rng.uniform(0, ceiling)
        ceiling = min(cap_s, ceiling * 2)


def through_outages(fn: Callable[[], T], *, what: str, deadline: float | None = None, base_s: float = 0.5,
                    cap_s: float = 30.0, sleep: Callable[[float], None] = time.sleep,
                    on_wait: Callable[[], None] | None = None) -> T:
    """``fn()``, retried while it raises an outage error and ``deadline`` (time.time()) is ahead.

    ``on_wait`` is called at least every ``REPORT_EVERY_S`` of waiting: a running shard's lease stays renewed
    while it waits out an outage (waiting is not being stuck), however long the backoff has grown."""
    delays = backoff_delays(base_s, cap_s)
    attempt = 0
    while True:
        try:
            return fn()
        except OUTAGE_ERRORS as e:
            if not is_outage(e):
                raise
            attempt += 1
            delay = next(delays)
            if deadline is not None and time.time() + delay >= deadline:
                raise
            if attempt == 1 or attempt % 10 == 0:
                log.warning("dependency unavailable; retrying", what=what, attempt=attempt, error=repr(e)[:300])
            _wait(delay, sleep, on_wait)


def _wait(delay: float, sleep: Callable[[float], None], on_wait: Callable[[], None] | None) -> None:
    if on_wait is None:
        sleep(delay)
        return
    left = delay
    while True:
        on_wait()
        if left <= 0:
            return
        step = min(REPORT_EVERY_S, left)
        sleep(step)
        left -= step
