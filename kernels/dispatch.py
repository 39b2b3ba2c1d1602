"""The one place that decides which implementation of each hot-path op runs.

``PAGEBATCH_KERNELS`` forces a backend: ``torch`` (the references), ``triton`` (the Triton
kernels; on CPU that needs ``TRITON_INTERPRET=1``), or ``auto`` (default: Triton for CUDA
tensors when Triton imports, torch otherwise).
"""
from __future__ import annotations

import os
from functools import lru_cache
from types import ModuleType

from kernels import reference

BACKENDS = ("auto", "torch", "triton")


def requested_backend() -> str:
    value = os.environ.get("PAGEBATCH_KERNELS", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"PAGEBATCH_KERNELS must be one of {', '.join(BACKENDS)}, got {value!r}")
    return value


@lru_cache(maxsize=1)
def _triton_ops() -> ModuleType | None:
    try:
        from kernels import triton_ops
    except ImportError:
        return None
    return triton_ops


def backend_for(device_type: str) -> ModuleType:
    """The module of ops (same function names as ``kernels.reference``) to use on this device."""
    choice = requested_backend()
    if choice == "torch" or (choice == "auto" and device_type != "cuda"):
        return reference  # without importing Triton: its import fixes TRITON_INTERPRET for the process
    triton = _triton_ops()
    if choice == "triton":
        if triton is None:
            raise RuntimeError("PAGEBATCH_KERNELS=triton but the Triton kernels could not be imported: pip install triton")
        return triton
    return triton if (triton is not None and device_type == "cuda") else reference
