"""The CPU kernels' C++ extension (``kernels/csrc``): the paged decode attention (``kernels.cpu_attention``), the
mixture-of-experts MLP (``kernels.cpu_moe``) and the large-block allocator (``kernels.cpu_block_cache``), registered
as ``torch.ops.pagebatch_cpu``.

Compiled on first use with ``torch.utils.cpp_extension.load`` (JIT, g++ with -O3 -march=native -fopenmp; ~10-20 s
once, then cached under TORCH_EXTENSIONS_DIR, in a folder named by the sources' hash and this CPU's feature flags).
If it cannot be built (no compiler, no ninja, build error) a warning is logged once, ``available()`` is False and
both callers fall back to ``kernels.reference``.
"""
from __future__ import annotations

import hashlib
import logging
import platform
import threading
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_CSRC = Path(__file__).resolve().parent / "csrc"
_SOURCES = [_CSRC / "cpu_attention.cpp", _CSRC / "cpu_moe.cpp", _CSRC / "cpu_block_cache.cpp"]
_HEADERS = [_CSRC / "cpu_attention_kernel.h"]
_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno"]
_LDFLAGS = ["-fopenmp"]

_lock = threading.Lock()
_ext = None  # torch.ops.pagebatch_cpu once loaded
_failed = False
_build_seconds: float | None = None


def _cpu_tag() -> str:
    """Short hash of this CPU's model and feature flags: a -march=native build is only valid on a matching CPU."""
    text = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "model name", "Features", "CPU part")):
                    text += line
                if line.strip() == "":
                    break
    except OSError:
        pass
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def load():
    """``torch.ops.pagebatch_cpu``, built (or loaded from the cache) on the first call; None if it cannot be."""
    global _ext, _failed, _build_seconds
    if _ext is not None or _failed:
        return _ext
    with _lock:
        if _ext is not None or _failed:
            return _ext
        start = time.perf_counter()
        try:
            from torch.utils import cpp_extension

            # The build folder is named by the sources' and header's hash: two checkouts (or versions) of
            # pagebatch on one machine share TORCH_EXTENSIONS_DIR, and under one name each would rebuild over
            # the other's library, so a process could load a kernel whose op schema it does not expect.
            digest = hashlib.sha1(b"".join(p.read_bytes() for p in _SOURCES + _HEADERS)).hexdigest()[:12]
            cpp_extension.load(
                name=f"pagebatch_cpu_{_cpu_tag()}_{digest}",
                sources=[str(p) for p in _SOURCES],
                extra_cflags=_CFLAGS,
                extra_ldflags=_LDFLAGS,
                is_python_module=False,
                verbose=False,
            )
            _ext = torch.ops.pagebatch_cpu
        except Exception as exc:  # noqa: BLE001 -- no compiler / ninja, build or load error: keep serving with the reference
            _failed = True
            log.warning("CPU kernels unavailable (%s: %s); using kernels.reference", type(exc).__name__, exc)
            return None
        _build_seconds = time.perf_counter() - start
        log.info("CPU kernels ready in %.1f s", _build_seconds)
        return _ext


def available() -> bool:
    """True when the C++ kernels are built (building them on the first call: slow once, then cached)."""
    return load() is not None


def build_seconds() -> float | None:
    """Seconds the first ``available()`` took in this process (compile, or load from the cache)."""
    return _build_seconds
