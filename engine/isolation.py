"""One request that makes a step raise fails alone: the rest of the batch carries on.

A forward pass that raises is bisected: each half of the batch is run again on its own, down to
the single request(s) that make it fail. Re-running a request's tokens rewrites the same KV slots
with the same values, so the requests that pass lose nothing and are not recomputed from scratch.
Sampling is per row, so a sampling step that raises is retried row by row.
"""
from __future__ import annotations

from collections.abc import Callable

import structlog
import torch

from pagebatch.engine.request import Request
from pagebatch.engine.runner import StepOutput
from pagebatch.engine.sampler import SampledToken
from pagebatch.engine.scheduler import ScheduledBatch

log = structlog.get_logger("pagebatch.engine")

Execute = Callable[[ScheduledBatch], StepOutput]
Sample = Callable[[torch.Tensor, list[Request], "list[list[int] | None] | None"], list[SampledToken]]


def execute_isolating(execute: Execute, batch: ScheduledBatch) -> tuple[list[Request], StepOutput, dict[str, str]]:
    """Run ``batch``; returns the sampled requests that ran, the step's output (their logits rows in that order,
    the pooled hidden states), and the requests that failed (id -> why)."""
    try:
        return batch.sampled_requests, execute(batch), {}
    except Exception as exc:  # noqa: BLE001 - find the request(s) that cause it
        if len(batch.requests) == 1:
            return [], StepOutput(), {batch.requests[0].request_id: _describe("the forward pass", exc)}
        log.warning("forward pass failed; re-running the batch in parts to find the request(s) that cause it",
                    batch_size=len(batch.requests), error=repr(exc))
    return _bisect(execute, batch)


def _bisect(execute: Execute, batch: ScheduledBatch) -> tuple[list[Request], StepOutput, dict[str, str]]:
    n = len(batch.requests)
    rows: list[Request] = []
    logits: list[torch.Tensor] = []
    pooled: dict[str, torch.Tensor] = {}
    failed: dict[str, str] = {}
    for part in (batch.subset(range(n // 2)), batch.subset(range(n // 2, n))):
        try:
            out = execute(part)
        except Exception as exc:  # noqa: BLE001
            if len(part.requests) == 1:
                failed[part.requests[0].request_id] = _describe("the forward pass", exc)
                continue
            part_rows, out, part_failed = _bisect(execute, part)
            failed.update(part_failed)
        else:
            part_rows = part.sampled_requests
        rows += part_rows
        if out.logits is not None:
            logits.append(out.logits)
        pooled.update(out.pooled)
    if failed:
        log.warning("requests failed the forward pass; the rest of the batch carries on", failed=sorted(failed))
    return rows, StepOutput(torch.cat(logits) if logits else None, pooled), failed


def sample_isolating(sample: Sample, logits: torch.Tensor, requests: list[Request]) -> tuple[dict[str, SampledToken], dict[str, str]]:
    """Sample a token for each request; returns {id: token} and the requests that failed (id -> why)."""
    try:
        return {r.request_id: t for r, t in zip(requests, sample(logits, requests, _allowed(requests)))}, {}
    except Exception as exc:  # noqa: BLE001 - find the row(s) that cause it
        log.warning("sampling failed; sampling row by row to find the request(s) that cause it", error=repr(exc))
    tokens: dict[str, SampledToken] = {}
    failed: dict[str, str] = {}
    for i, req in enumerate(requests):
        try:
            tokens[req.request_id] = sample(logits[i : i + 1], [req], _allowed([req]))[0]
        except Exception as exc:  # noqa: BLE001
            failed[req.request_id] = _describe("sampling", exc)
    log.warning("requests failed sampling; the rest of the batch carries on", failed=sorted(failed))
    return tokens, failed


def _allowed(requests: list[Request]) -> list[list[int] | None] | None:
    allowed = [r.choice_state.allowed() if r.choice_state is not None else None for r in requests]
    return allowed if any(a is not None for a in allowed) else None


def _describe(stage: str, exc: Exception) -> str:
    return f"internal engine error: {stage} failed on this request ({type(exc).__name__}: {str(exc)[:200]})"
