"""Paged attention for CPU that reads the decode rows' K/V blocks in place.

``paged_attention`` has the signature and semantics of ``kernels.reference.paged_attention``.
Decode rows (query_len == 1) go to a small C++ kernel (``kernels/csrc/cpu_attention.cpp``) that
walks each sequence's block table and reads the cache blocks where they are, in one pass over
K and one over V, with fp32 softmax and accumulation for every cache dtype (fp32/bf16/fp16). The
reference instead gathers every decode group into a padded copy (index_select) that SDPA then
reads again. Prefill rows (query_len > 1) use the same SDPA path as the reference.

The kernel is compiled on first use with ``torch.utils.cpp_extension.load`` (JIT, g++ with
-O3 -march=native -fopenmp; ~6-10 s once, then cached under TORCH_EXTENSIONS_DIR, keyed by the
source, the flags and this CPU's feature flags). If it cannot be built (no compiler, no ninja,
build error) a warning is logged once, ``available()`` is False and ``paged_attention`` falls
back to the reference. The engine uses it only when asked (``EngineConfig.kernels="cpu"``).

The other hot-path ops are re-exported from the reference, so this module can serve as a whole
backend (same function names as ``kernels.reference``).
"""
from __future__ import annotations

import hashlib
import logging
import platform
import threading
import time
from pathlib import Path

import torch

from pagebatch.kernels import reference
from pagebatch.kernels.metadata import AttentionMetadata
from pagebatch.kernels.reference import fused_moe, gelu_tanh_and_mul, rms_norm, rotary_embedding, silu_and_mul, write_kv

__all__ = [
    "available", "build_seconds", "decode_attention", "fused_moe", "gelu_tanh_and_mul", "paged_attention", "rms_norm",
    "rotary_embedding", "silu_and_mul", "write_kv",
]

log = logging.getLogger(__name__)

_CSRC = Path(__file__).resolve().parent / "csrc"
_SOURCES = [_CSRC / "cpu_attention.cpp"]
_HEADERS = [_CSRC / "cpu_attention_kernel.h"]
_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno"]
_LDFLAGS = ["-fopenmp"]
# Contexts are split across threads only when (decode sequences x kv heads) is under 4x the
# thread count; each split then keeps at least this many keys.
MIN_SPLIT_LEN = 256

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


def _load():
    global _ext, _failed, _build_seconds
    if _ext is not None or _failed:
        return _ext
    with _lock:
        if _ext is not None or _failed:
            return _ext
        start = time.perf_counter()
        try:
            from torch.utils.cpp_extension import load

            # The build folder is named by the sources' and header's hash: two checkouts (or versions) of
            # pagebatch on one machine share TORCH_EXTENSIONS_DIR, and under one name each would rebuild over
            # the other's library, so a process could load a kernel whose op schema it does not expect.
            digest = hashlib.sha1(b"".join(p.read_bytes() for p in _SOURCES + _HEADERS)).hexdigest()[:12]
            load(
                name=f"pagebatch_cpu_attention_{_cpu_tag()}_{digest}",
                sources=[str(p) for p in _SOURCES],
                extra_cflags=_CFLAGS,
                extra_ldflags=_LDFLAGS,
                is_python_module=False,
                verbose=False,
            )
            _ext = torch.ops.pagebatch_cpu
        except Exception as exc:  # noqa: BLE001 -- no compiler / ninja, build or load error: keep serving with the reference
            _failed = True
            log.warning("CPU paged-attention kernel unavailable (%s: %s); using kernels.reference", type(exc).__name__, exc)
            return None
        _build_seconds = time.perf_counter() - start
        log.info("CPU paged-attention kernel ready in %.1f s", _build_seconds)
        return _ext


def available() -> bool:
    """True when the C++ decode kernel is built (building it on the first call: slow once, then cached)."""
    return _load() is not None


def build_seconds() -> float | None:
    """Seconds the first ``available()`` took in this process (compile, or load from the cache)."""
    return _build_seconds


def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor, block_tables: torch.Tensor,
    seq_idx: torch.Tensor, row_idx: torch.Tensor, ctx_lens: torch.Tensor, scale: float, min_split_len: int = MIN_SPLIT_LEN,
    window: int | None = None,
) -> None:
    """out[row_idx[i]] = attention of q[row_idx[i]] over the first ctx_lens[i] cached tokens of block_tables[seq_idx[i]]
    (with ``window``, over the last ``window`` of them).

    q/out [T, H, D], caches [num_blocks, block_size, Hkv, D] (same dtype as q), block_tables int32,
    seq_idx/row_idx int64, ctx_lens int32. Needs ``available()``.
    """
    ext = _load()
    if ext is None:
        raise RuntimeError("the CPU paged-attention kernel is not available")
    ext.decode_attention(q, k_cache, v_cache, out, block_tables, seq_idx, row_idx, ctx_lens, scale, min_split_len,
                         window or 0)


def paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
    window: int | None = None,
) -> torch.Tensor:
    """Causal attention of packed queries [T, H, D] over each sequence's paged context (as the reference; with
    ``window``, a sliding-window layer's)."""
    ext = _load() if q.device.type == "cpu" else None
    if ext is None:
        return reference.paged_attention(q, k_cache, v_cache, meta, scale, window)
    plan = _plan(meta, k_cache.shape[1], window)
    out = torch.empty_like(q)
    if plan.num_decodes:
        qd, kc, vc = q, k_cache, v_cache
        if q.stride(-1) != 1:
            qd = q.contiguous()
        if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1 or k_cache.stride() != v_cache.stride():
            kc, vc = k_cache.contiguous(), v_cache.contiguous()
        target = out
        if qd.dtype != kc.dtype:  # the kernel takes one dtype; not a case the engine produces
            qd = qd.to(kc.dtype)
            target = torch.empty_like(qd)
        ext.decode_attention(
            qd, kc, vc, target, plan.block_tables, plan.seq_idx, plan.row_idx, plan.ctx_lens, scale, MIN_SPLIT_LEN,
            window or 0,
        )
        if target is not out:
            out.copy_(target)
    reference.prefill_attention(q, k_cache, v_cache, plan.prefills, out, scale)
    return out


class _Plan:
    """The decode rows as index lists for the kernel, and the prefills as the reference runs them; once per batch."""

    def __init__(self, meta: AttentionMetadata, block_size: int, window: int | None) -> None:
        q_lens, ctx = meta.query_lens_cpu, meta.context_lens_cpu
        offsets, total = [], 0
        for n in q_lens:
            offsets.append(total)
            total += n
        decodes = [i for i, n in enumerate(q_lens) if n == 1]
        self.num_decodes = len(decodes)
        self.block_tables = meta.block_tables.to(torch.int32)
        if self.block_tables.stride(-1) != 1:
            self.block_tables = self.block_tables.contiguous()
        self.seq_idx = torch.tensor(decodes, dtype=torch.int64)
        self.row_idx = torch.tensor([offsets[i] for i in decodes], dtype=torch.int64)
        self.ctx_lens = torch.tensor([ctx[i] for i in decodes], dtype=torch.int32)
        self.prefills = reference.plan_prefills(meta, block_size, window)


def _plan(meta: AttentionMetadata, block_size: int, window: int | None) -> _Plan:
    """The batch's plan for this window (None: full attention), built once per batch and window."""
    plans = getattr(meta, "_cpu_attention_plans", None)
    if plans is None:
        plans = meta._cpu_attention_plans = {}
    plan = plans.get(window)
    if plan is None:
        plan = plans[window] = _Plan(meta, block_size, window)
    return plan
