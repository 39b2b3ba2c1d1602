"""What a batch file will cost and how long it will take, before it runs (pure: the caller brings the tokenizer).

Every line is validated as a batch validates it, and every valid line's engine requests are planned by the
model's own request builder (chat template, tokenizer, the engine's checks: ``PromptPlanner``), so the prompt
tokens are exactly those the run will report. A line the engine would refuse counts as invalid. Cached-prefix
tokens are what the engine's prefix cache would serve if it kept every block (the same block hashes, the same
rule: a prompt's last token is always computed). Completion tokens are an upper bound (max_tokens, or a label's
length, within the context). Cost uses the configured prices; the ETA uses throughput that live workers of the
model measured (``Throughput``), never a constant.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from pagebatch.engine.block_manager import hash_block
from pagebatch.engine.inputs import RequestRejected
from pagebatch.jobs.batch.embeddings import EMBEDDINGS
from pagebatch.jobs.batch.validate import RejectedLine, ValidLine
from pagebatch.jobs.settings import TokenPrices

FIRST_ERRORS = 10
PER_MILLION = 1_000_000


class PromptPlanner(Protocol):
    """The model's request planning: an EngineLoop, or a PromptChecker (engine/prompt_check.py) without weights."""

    @property
    def block_size(self) -> int: ...

    def plan_request(self, prompt: Any, params: Any = None) -> Any: ...  # a RequestPlan; raises RequestRejected


@dataclass(frozen=True)
class Throughput:
    """What one live worker of the model measured of its own engine (its telemetry)."""

    worker: str
    seconds_per_prompt_token: float
    seconds_per_generated_token: float
    completion_fill: float | None  # generated tokens / tokens allowed, over the requests it finished


@dataclass
class LineProblem:
    line: int
    custom_id: str | None
    code: str
    message: str


@dataclass
class Estimate:
    model: str
    endpoint: str
    lines: int = 0
    valid: int = 0
    invalid: int = 0
    first_errors: list[LineProblem] = field(default_factory=list)
    other_models: dict[str, int] = field(default_factory=dict)  # valid lines for other models: not estimated here
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt tokens, those the prefix cache is expected to serve
    completion_tokens_max: int = 0
    cost: dict[str, Any] | None = None
    eta_seconds: float | None = None
    eta: dict[str, Any] = field(default_factory=dict)  # how the ETA was reached

    def public(self) -> dict[str, Any]:
        return asdict(self)


class PrefixCache:
    """The engine's prefix-cache rule over hashes only: which full prompt blocks an earlier request left behind."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.seen: set[bytes] = set()

    def serve(self, token_ids: list[int]) -> int:
        """Tokens of this prompt the cache would serve; then its blocks are cached for the next prompts."""
        bs, parent, hashes = self.block_size, b"", []
        for i in range(len(token_ids) // bs):
            parent = hash_block(parent, token_ids[i * bs:(i + 1) * bs])
            hashes.append(parent)
        shareable = (len(token_ids) - 1) // bs  # the last prompt token is always computed
        hits = 0
        while hits < shareable and hashes[hits] in self.seen:
            hits += 1
        self.seen.update(hashes)
        return hits * bs


def estimate_lines(verdicts: Iterable[ValidLine | RejectedLine], planner: PromptPlanner, *, model: str,
                   endpoint: str) -> Estimate:
    """Tokens of every line; ``verdicts`` come from ``validate.check_lines`` (FileError propagates)."""
    estimate = Estimate(model=model, endpoint=endpoint)
    cache = PrefixCache(planner.block_size)
    for verdict in verdicts:
        estimate.lines += 1
        if isinstance(verdict, RejectedLine):
            _invalid(estimate, verdict.line, verdict.custom_id, verdict.error.code, verdict.error.message)
            continue
        if verdict.model != model:
            estimate.valid += 1
            estimate.other_models[verdict.model] = estimate.other_models.get(verdict.model, 0) + 1
            continue
        try:
            plans = [planner.plan_request(prompt, params) for prompt, params in verdict.request.calls()]
        except RequestRejected as e:
            _invalid(estimate, verdict.line, verdict.custom_id, e.code, str(e))
            continue
        estimate.valid += 1
        if endpoint == EMBEDDINGS:  # every input is a prompt of its own; pooling may not read the cache: none counted
            estimate.prompt_tokens += sum(len(p.prompt_token_ids) for p in plans)
            continue
        # like the usage log: the prompt once per line (choice 0's), every choice's completion
        estimate.prompt_tokens += len(plans[0].prompt_token_ids)
        estimate.cached_tokens += cache.serve(plans[0].prompt_token_ids)
        for plan in plans[1:]:
            cache.serve(plan.prompt_token_ids)
        estimate.completion_tokens_max += sum(p.max_new_tokens for p in plans)
    return estimate


def _invalid(estimate: Estimate, line: int, custom_id: str | None, code: str, message: str) -> None:
    estimate.invalid += 1
    if len(estimate.first_errors) < FIRST_ERRORS:
        estimate.first_errors.append(LineProblem(line, custom_id, code, message))


def price(estimate: Estimate, prices: TokenPrices | None) -> dict[str, Any] | None:
    """USD at the configured per-million-token prices; the completion at its upper bound (so is the total)."""
    if prices is None:
        return None
    computed = estimate.prompt_tokens - estimate.cached_tokens
    parts = {"input": computed * prices.input / PER_MILLION,
             "cached_input": estimate.cached_tokens * prices.cached_input / PER_MILLION,
             "output_max": estimate.completion_tokens_max * prices.output / PER_MILLION}
    return {"currency": "USD", **{k: round(v, 6) for k, v in parts.items()}, "total_max": round(sum(parts.values()), 6),
            "prices_per_million_tokens": prices.model_dump()}


def eta(estimate: Estimate, workers: list[Throughput]) -> tuple[float | None, dict[str, Any]]:
    """Seconds until the file would be done on the model's live workers, each working its share at the costs it
    measured; the completion expected as the workers' measured share of the tokens allowed that requests use."""
    if not workers:
        return None, {"basis": "no live worker of this model has measured its throughput yet; run a batch first"}
    fills = [w.completion_fill for w in workers if w.completion_fill is not None]
    fill = min(1.0, sum(fills) / len(fills)) if fills else 1.0
    computed = estimate.prompt_tokens - estimate.cached_tokens
    completion = estimate.completion_tokens_max * fill
    # each worker alone would take `alone` seconds; together they share the lines: 1 / sum(1 / alone)
    alone = [computed * w.seconds_per_prompt_token + completion * w.seconds_per_generated_token for w in workers]
    speed = sum(1 / t for t in alone if t > 0)
    seconds = 1 / speed if speed > 0 else 0.0
    return round(seconds, 2), {
        "basis": "throughput the model's live workers measured of their engines",
        "workers": len(workers), "completion_tokens_expected": round(completion),
        "completion_fill": round(fill, 4),
        "seconds_per_prompt_token": [round(w.seconds_per_prompt_token, 9) for w in workers],
        "seconds_per_generated_token": [round(w.seconds_per_generated_token, 9) for w in workers],
    }
