"""One helper for the service's background threads: run a function every few seconds until stopped."""
from __future__ import annotations

import threading
from collections.abc import Callable

from pagebatch.jobs.errors import OUTAGE_ERRORS
from pagebatch.jobs.logs import get_logger

log = get_logger(__name__)


class Periodic:
    """Calls ``fn`` every ``interval_s`` on a daemon thread; an outage is logged as a warning, a bug with its trace.

    ``immediately``: call once at start instead of waiting one interval first.
    """

    def __init__(self, name: str, interval_s: float, fn: Callable[[], object], *, immediately: bool = False) -> None:
        self.name, self.interval_s, self.fn, self.immediately = name, interval_s, fn, immediately
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pagebatch-{name}", daemon=True)

    def start(self) -> "Periodic":
        self._thread.start()
        return self

    def stop(self, join_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=join_s)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _run(self) -> None:
        if not self.immediately and self._stop.wait(self.interval_s):
            return
        while True:
            try:
                self.fn()
            except (*OUTAGE_ERRORS, OSError) as e:
                log.warning(f"{self.name} skipped", error=repr(e))
            except Exception:
                log.exception(f"{self.name} failed")
            if self._stop.wait(self.interval_s):
                return
