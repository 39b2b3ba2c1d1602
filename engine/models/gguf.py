"""GGUF checkpoints: converted once, through transformers' GGUF support, into a plain Hugging Face directory.

transformers dequantizes the GGUF's tensors to float32 (a Q4_1 or Q8_0 weight is exact in float32); the
directory it becomes holds config.json, model.safetensors, the tokenizer (with the GGUF's chat template) and
generation_config.json, and is cached under

    <cache_dir>/<key>/<stem>/        cache_dir: default_gguf_cache_dir(), $PAGEBATCH_CACHE_DIR/gguf
                                     key: a hash of the file's name, size and mtime, CONVERT_VERSION and transformers' version
                                     stem: the file's name less .gguf, so the engine's default model name is the stem

Concurrent conversions of one file: an advisory lock (flock) lets one process convert while the others wait;
the conversion is written to a temporary directory beside the cache entry and renamed into place, so even
without the lock (a filesystem that ignores flock) every process ends with the one complete entry.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from pagebatch.engine.cache import cache_root
from pagebatch.engine.models.errors import CheckpointError

CONVERT_VERSION = 1  # bump when the conversion's output changes; old cache entries are then left unused
MARKER = "pagebatch-gguf.json"  # written last inside the entry, so its presence means a complete conversion
INSTALL_HINT = "reading GGUF checkpoints needs the gguf and accelerate packages, which pagebatch depends on: reinstall pagebatch (pip install -c constraints.txt -e .) or pip install gguf accelerate"
STALE_TMP_S = 24 * 3600


def is_gguf(path: Path) -> bool:
    return path.suffix.lower() == ".gguf"


def default_gguf_cache_dir() -> Path:
    return cache_root() / "gguf"


def gguf_cache_key(file: Path) -> str:
    """The file's name, size and mtime (not its path: copies of one file share a conversion), hashed."""
    from importlib.metadata import version

    st = file.stat()
    # transformers' version too: the tokenizer files it writes need not load in an older transformers
    ident = f"v{CONVERT_VERSION}\0{file.name}\0{st.st_size}\0{st.st_mtime_ns}\0{version('transformers')}"
    return hashlib.sha256(ident.encode()).hexdigest()[:20]


def _stem(file: Path) -> str:
    return file.name[: -len(".gguf")] if is_gguf(file) else file.name


def converted_gguf_dir(file: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Where convert_gguf puts (or has put) this file's conversion."""
    file = Path(file).expanduser()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_gguf_cache_dir()
    return root / gguf_cache_key(file) / _stem(file)


def _require_packages() -> None:
    for module in ("gguf", "accelerate"):  # transformers needs accelerate to instantiate a model from a GGUF file
        try:
            __import__(module)
        except ImportError as exc:
            raise CheckpointError(f"{INSTALL_HINT} ({module} is missing)") from exc


def convert_gguf(file: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The converted checkpoint directory of a .gguf file: from the cache, or converted into it now."""
    file = Path(file).expanduser()
    if not file.is_file():
        raise CheckpointError(f"{file}: no such GGUF file")
    target = converted_gguf_dir(file, cache_dir)
    entry = target.parent
    if (target / MARKER).is_file():
        return target
    _require_packages()
    entry.parent.mkdir(parents=True, exist_ok=True)
    with _lock(entry.parent / f".{entry.name}.lock"):  # one converts, the others wait for its result
        if (target / MARKER).is_file():
            return target
        _remove_stale_tmp(entry.parent)
        _convert_into(file, entry, target)
    return target


@contextlib.contextmanager
def _lock(path: Path):
    """An advisory lock across processes (flock) where the platform has one; the rename stays the safety."""
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent conversions waste work but stay correct
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_into(file: Path, entry: Path, target: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=entry.parent))
    try:
        _convert(file, tmp / target.name)
        _share(tmp)
        try:
            os.rename(tmp, entry)  # atomic; fails if another process's conversion got there first
        except OSError:
            if not (target / MARKER).is_file():  # not a finished conversion but debris: replace it
                shutil.rmtree(entry, ignore_errors=True)
                try:
                    os.rename(tmp, entry)
                except OSError:
                    if not (target / MARKER).is_file():
                        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _share(tmp: Path) -> None:
    """mkdtemp makes its directory private; a cache entry is as readable as any checkpoint directory."""
    for path in [tmp, *tmp.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def _remove_stale_tmp(root: Path) -> None:
    """Temporary directories left by a conversion that was killed more than a day ago."""
    now = time.time()
    for tmp in root.glob(".tmp-*"):
        try:
            if now - tmp.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def _convert(file: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, name = str(file.parent), file.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    except ImportError as exc:
        raise CheckpointError(f"{INSTALL_HINT} ({exc})") from exc
    except (ValueError, KeyError, RuntimeError, OSError) as exc:  # not a GGUF file, or an architecture transformers cannot read
        raise CheckpointError(f"{file} cannot be read as a GGUF checkpoint: {exc}") from exc
    out.mkdir(parents=True)
    config = model.config
    # save_pretrained refuses a model loaded from GGUF ("not serializable"); its weights are plain float32
    # tensors by now, so write them directly, leaving out the tied lm_head (the loader ties it back).
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = torch.float32
    config.architectures = [type(model).__name__]  # transformers leaves it unset for a GGUF-born config
    config.save_pretrained(str(out))
    generation = model.generation_config
    if generation.eos_token_id is None:
        generation.eos_token_id = tokenizer.eos_token_id
    generation.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    st = file.stat()
    (out / MARKER).write_text(json.dumps({
        "source": str(file.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
        "convert_version": CONVERT_VERSION, "transformers": _version("transformers"), "gguf": _version("gguf"),
    }, indent=2))


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
