"""`pagebatch estimate FILE --model M`: the estimate of a file, computed here with the checkpoint's tokenizer.

The ETA needs throughput that live workers of the model measured: it is read from PAGEBATCH_REDIS_URL when a
service runs there, and left out (with the reason) when none answers.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import redis

from pagebatch.jobs.batch.estimate import Estimate
from pagebatch.jobs.batch.validate import FileError
from pagebatch.jobs.commands.local_run import detect_endpoint
from pagebatch.jobs.engine_host import served_name
from pagebatch.jobs.pipeline.estimates import estimate_file, live_throughput
from pagebatch.jobs.settings import Settings


def run_estimate(settings: Settings, path: Path, model_path: str, *, name: str | None = None,
                 endpoint: str | None = None) -> Estimate | None:
    from pagebatch.engine.prompt_check import PromptChecker

    model = served_name(model_path, name)
    planner = PromptChecker.from_checkpoint(model_path, settings.cache_dir / "gguf")
    workers, unmeasured = [], None
    try:
        client = redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_connect_timeout=2,
                                      socket_timeout=5)
        workers = live_throughput(client, model)
    except redis.RedisError as e:
        unmeasured = f"no service answered at PAGEBATCH_REDIS_URL ({type(e).__name__}): no measured throughput"
    try:
        with path.open("rb") as f:
            estimate = estimate_file((raw.rstrip(b"\r\n") for raw in f), path.stat().st_size, planner, model=model,
                                     endpoint=endpoint or detect_endpoint(path), settings=settings,
                                     known_models={model}, workers=workers)
    except FileError as e:
        print(f"pagebatch estimate: {e.code}: {e.message}", file=sys.stderr)
        return None
    if unmeasured and estimate.eta_seconds is None:
        estimate.eta = {"basis": unmeasured}
    return estimate


def print_estimate(estimate: Estimate, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(estimate.public(), indent=2))
        return
    e = estimate
    print(f"{e.lines} lines for {e.model} ({e.endpoint}): {e.valid} valid, {e.invalid} invalid")
    for problem in e.first_errors:
        print(f"  line {problem.line} ({problem.custom_id}): {problem.code}: {problem.message}")
    for other, count in sorted(e.other_models.items()):
        print(f"  {count} lines for another model, {other}: not estimated here")
    print(f"prompt tokens: {e.prompt_tokens} ({e.cached_tokens} expected from the prefix cache)")
    print(f"completion tokens: at most {e.completion_tokens_max}")
    if e.cost is not None:
        print(f"cost: at most {e.cost['total_max']:.6f} {e.cost['currency']}")
    else:
        print(f"cost: no prices for {e.model} (PAGEBATCH_PRICES)")
    if e.eta_seconds is not None:
        print(f"ETA: {e.eta_seconds:.1f}s on {e.eta['workers']} live worker(s)")
    else:
        print(f"ETA: unknown: {e.eta['basis']}")
