"""The embedded default for `pagebatch run`: a tiny random-weight model and a small demo batch."""
from __future__ import annotations

import json
import random
from pathlib import Path

DEMO_MODEL = "pagebatch-demo"
_DOCS = [
    "The delivery was fast and the price was good, but the box arrived damaged.",
    "Great quality for the price. Would order again.",
    "The worker restarted twice during the night and the queue grew slowly.",
    "Terrible support: three emails and no answer after a week.",
    "The paged attention kernel halves latency on long prompts.",
    "Neutral experience overall; nothing special, nothing bad.",
]


REAL_DEMO_MODEL = "models/SmolLM2-135M-Instruct.Q4_1.gguf"  # what scripts/fetch_smollm2.py puts in the cache


def demo_model(cache_dir: Path) -> Path:
    """SmolLM2-135M-Instruct when `python scripts/fetch_smollm2.py` has fetched it (real sentences), else the
    tiny random-weight model (made on first use, in a second; its text is noise)."""
    real = cache_dir / REAL_DEMO_MODEL
    return real if real.is_file() else ensure_demo_model(cache_dir)


def ensure_demo_model(cache_dir: Path) -> Path:
    from engine.make_model import make_checkpoint

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
