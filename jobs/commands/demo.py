"""The embedded default for `pagebatch run`: a tiny random-weight model and a small demo batch."""
from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path

from pagebatch.jobs.commands import smollm2

DEMO_MODEL = "pagebatch-demo"
_DOCS = [
    "The delivery was fast and the price was good, but the box arrived damaged.",
    "Great quality for the price. Would order again.",
    "The worker restarted twice during the night and the queue grew slowly.",
    "Terrible support: three emails and no answer after a week.",
    "The paged attention kernel halves latency on long prompts.",
    "Neutral experience overall; nothing special, nothing bad.",
]


@dataclass(frozen=True)
class DemoModel:
    path: Path
    description: str  # what `pagebatch run` prints about it


def gguf_readable() -> bool:
    """Whether this environment can read a GGUF file (the packages transformers needs for it import)."""
    return all(importlib.util.find_spec(name) is not None for name in ("gguf", "accelerate"))


def demo_model(cache_dir: Path) -> DemoModel:
    """SmolLM2-135M-Instruct when `python scripts/fetch_smollm2.py` has fetched it and this environment can
    read it (real sentences), else the tiny random-weight model (made on first use, in a second; its text is
    noise). The demo works in every environment: a fetched model that cannot be read is passed over, with the
    reason in the description."""
    real = smollm2.default_dest(cache_dir)
    if smollm2.is_fetched(cache_dir):
        if gguf_readable():
            return DemoModel(real, f"SmolLM2-135M-Instruct ({real})")
        reason = f"{real.name} is fetched but this environment cannot read GGUF files (pip install gguf accelerate)"
    else:
        reason = "for real sentences: python scripts/fetch_smollm2.py, then run this again"
    tiny = ensure_demo_model(cache_dir)
    return DemoModel(tiny, f"the tiny random-weight demo model ({tiny}; its answers are noise: {reason})")


def ensure_demo_model(cache_dir: Path) -> Path:
    from pagebatch.engine.make_model import make_checkpoint

    path = cache_dir / DEMO_MODEL
    if not (path / "config.json").exists():
        make_checkpoint(path, "llama")
    return path


def write_demo_input(path: Path, model: str = DEMO_MODEL, requests: int = 200, seed: int = 0) -> Path:
    """Half summarization (chat), half labeling (chat with a fixed system prompt)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i in range(requests):
            doc = rng.choice(_DOCS)
            if i % 2 == 0:
                messages = [{"role": "user", "content": f"Summarize in one sentence: {doc}"}]
            else:
                messages = [{"role": "system", "content": "Label the review: positive, negative or neutral."},
                            {"role": "user", "content": doc}]
            body = {"model": model, "messages": messages, "max_tokens": 24, "temperature": 0.7, "seed": i}
            f.write(json.dumps({"custom_id": f"demo-{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": body}) + "\n")
    return path
