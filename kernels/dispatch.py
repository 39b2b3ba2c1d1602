"""The one place that decides which implementation of each hot-path op runs, and what it supports.

The caller names the choice (the engine passes ``EngineConfig.kernels``; nothing here reads the
environment): ``torch`` (the references), ``triton`` (the Triton kernels; on CPU that needs
``TRITON_INTERPRET=1``), ``cpu`` (the C++ CPU decode-attention kernel of ``kernels/cpu_attention.py``,
built on first use; the references where it cannot be built), or ``auto`` (Triton for CUDA tensors
when Triton imports, ``cpu`` for CPU tensors, torch otherwise).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType, SimpleNamespace

from pagebatch.kernels import reference

BACKENDS = ("auto", "torch", "triton", "cpu")


@dataclass(frozen=True)
class KernelBackend:
    """A set of ops (a module with the function names of ``kernels.reference``) and what it can do."""

    name: str  # torch | triton | cpu
    ops: ModuleType | SimpleNamespace
    # Its launches read no per-step host values, so a decode step can be captured in a CUDA graph and replayed.
    supports_cuda_graphs: bool
    # ops whose kernel failed its self-check (kernels.self_check) and that run the torch reference instead
    fallbacks: tuple[str, ...] = ()

    def implementation(self, op: str) -> str:
        """What runs ``op``: the backend's own kernel (triton / cpu), torch (the reference), or torch-fallback."""
        if op in self.fallbacks:
            return "torch-fallback"
        return self.name if getattr(self.ops, op) is not getattr(reference, op, None) else "torch"


TORCH = KernelBackend("torch", reference, supports_cuda_graphs=False)


def check_choice(choice: str) -> str:
    if choice not in BACKENDS:
        raise ValueError(f"kernels must be one of {', '.join(BACKENDS)}, got {choice!r}")
    return choice


@lru_cache(maxsize=1)
def _triton_backend() -> KernelBackend | None:
    try:
        from pagebatch.kernels import triton_ops
    except ImportError:
        return None
    return KernelBackend("triton", triton_ops, supports_cuda_graphs=True)


@lru_cache(maxsize=1)
def _cpu_backend() -> KernelBackend:
    from pagebatch.kernels import cpu_attention

    return KernelBackend("cpu", cpu_attention, supports_cuda_graphs=False) if cpu_attention.available() else TORCH


def select_backend(choice: str, device_type: str) -> KernelBackend:
    """The backend to run on this device type ('cpu', 'cuda', ...) for a choice among ``BACKENDS``."""
    check_choice(choice)
    if choice == "cpu":
        if device_type != "cpu":
            raise ValueError(f"kernels='cpu' runs on CPU tensors, not {device_type}")
        return _cpu_backend()
    if choice == "auto" and device_type == "cpu":
        return _cpu_backend()  # the C++ decode attention where it builds, else the references
    if choice == "torch" or (choice == "auto" and device_type != "cuda"):
        return TORCH  # without importing Triton: its import fixes TRITON_INTERPRET for the process
    triton = _triton_backend()
    if choice == "triton":
        if triton is None:
            raise RuntimeError("kernels='triton' but the Triton kernels could not be imported: pip install triton")
        return triton
    return triton if triton is not None else TORCH


def backend_for(device_type: str, choice: str = "auto") -> ModuleType:
    """The module of ops ``select_backend`` picks."""
    return select_backend(choice, device_type).ops
