"""How a checkpoint's embedding is pooled, read from its files: sentence-transformers' ``modules.json`` and
``1_Pooling/config.json`` when present, Matryoshka dimensions from ``config.json``.

Without a sentence-transformers description a decoder's embedding is its last token's final hidden
state, L2-normalized (what vLLM does for any causal checkpoint served as an embedding model, and
what Qwen3-Embedding's own description says).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POOLING_METHODS = ("last", "mean", "cls")
_ST_MODES = {"pooling_mode_lasttoken": "last", "pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}
_ST_UNSUPPORTED_MODES = ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
                         "pooling_mode_weightedmean_tokens")
_ST = "sentence_transformers.models."
_ST_SERVED = {_ST + "Transformer", _ST + "Pooling", _ST + "Normalize"}


@dataclass(frozen=True)
class ModelPooling:
    hidden_size: int  # the embedding's width before any Matryoshka truncation
    method: str = "last"  # one of POOLING_METHODS
    normalize: bool = True
    matryoshka: bool = False  # whether a prefix of the vector is itself an embedding (``dimensions``)
    matryoshka_dimensions: tuple[int, ...] | None = None  # the prefixes it was trained for; None: any width
    unsupported: str | None = None  # why the checkpoint's embeddings cannot be served as it describes them


def read_pooling(path: Path, hf_config: Any) -> ModelPooling:
    """The checkpoint's pooling; never raises (what cannot be served is named in ``unsupported``)."""
    hidden_size = int(hf_config.hidden_size)
    dims = getattr(hf_config, "matryoshka_dimensions", None)
    matryoshka = bool(getattr(hf_config, "is_matryoshka", False)) or bool(dims)
    matryoshka_dimensions = tuple(int(d) for d in dims) if isinstance(dims, (list, tuple)) and dims else None
    base = dict(hidden_size=hidden_size, matryoshka=matryoshka, matryoshka_dimensions=matryoshka_dimensions)
    try:
        modules = _read_json(path / "modules.json")
    except (OSError, ValueError) as exc:
        return ModelPooling(**base, unsupported=f"its modules.json cannot be read ({exc})")
    if modules is None:
        return ModelPooling(**base)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        return ModelPooling(**base, unsupported="its modules.json is not a list of modules")
    kinds = [str(m.get("type", "")) for m in modules]
    other = [k for k in kinds if k not in _ST_SERVED]
    if other:
        return ModelPooling(**base, unsupported=f"its sentence-transformers module {other[0]} is not supported")
    pooling = next((m for m in modules if m.get("type") == _ST + "Pooling"), None)
    method, why = ("last", None) if pooling is None else _st_pooling(path / str(pooling.get("path", "")))
    return ModelPooling(**base, method=method, normalize=_ST + "Normalize" in kinds, unsupported=why)


def _st_pooling(folder: Path) -> tuple[str, str | None]:
    try:
        config = _read_json(folder / "config.json")
    except (OSError, ValueError) as exc:
        return "last", f"its pooling config cannot be read ({exc})"
    if not isinstance(config, dict):
        return "last", f"{folder.name}/config.json is missing or not an object"
    unsupported = [k for k in _ST_UNSUPPORTED_MODES if config.get(k)]
    chosen = [method for key, method in _ST_MODES.items() if config.get(key)]
    if unsupported or len(chosen) != 1:
        modes = [k for k in (*_ST_MODES, *_ST_UNSUPPORTED_MODES) if config.get(k)]
        return "last", f"its pooling ({', '.join(modes) or 'none'}) is not one of last token, mean or CLS"
    if config.get("include_prompt", True) is False:
        return "last", "its pooling leaves the prompt out (include_prompt: false), which is not supported"
    return chosen[0], None


def _read_json(file: Path) -> Any:
    if not file.is_file():
        return None
    return json.loads(file.read_text(encoding="utf-8"))
