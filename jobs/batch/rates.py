"""How fast a batch moves and when it will end, from samples of its progress (pure; the progress stream feeds it)."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Rates:
    lines_per_s: float | None
    tokens_per_s: float | None  # output tokens


class RateWindow:
    """Lines and output tokens per second over the last ``window_s`` seconds of samples.

    Until the samples span ``min_span_s``, the rates are the averages since ``started_at`` (when the batch began
    to run), so a stream opened late still answers at once.
    """

    def __init__(self, started_at: float | None, window_s: float = 30.0, min_span_s: float = 2.0) -> None:
        self.started_at = started_at
        self.window_s, self.min_span_s = window_s, min_span_s
        self.samples: deque[tuple[float, int, int]] = deque()

    def add(self, now: float, lines: int, tokens: int) -> None:
        self.samples.append((now, lines, tokens))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    def rates(self) -> Rates:
        if not self.samples:
            return Rates(None, None)
        now, lines, tokens = self.samples[-1]
        first_t, first_lines, first_tokens = self.samples[0]
        if now - first_t >= self.min_span_s:
            span = now - first_t
            return Rates((lines - first_lines) / span, (tokens - first_tokens) / span)
        if self.started_at is None or now - self.started_at <= 0:
            return Rates(None, None)
        span = now - self.started_at
        return Rates(lines / span, tokens / span)


def eta_seconds(remaining_lines: int, lines_per_s: float | None) -> float | None:
    """Seconds until the remaining lines are done at the current rate; None while there is no rate to go by."""
    if remaining_lines <= 0:
        return 0.0
    if not lines_per_s or lines_per_s <= 0:
        return None
    return remaining_lines / lines_per_s
