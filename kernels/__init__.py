"""Hot-path operations of the engine: Triton kernels with pure-torch references."""
from kernels.dispatch import BACKENDS, KernelBackend, backend_for, select_backend
from kernels.metadata import AttentionMetadata

__all__ = ["BACKENDS", "AttentionMetadata", "KernelBackend", "backend_for", "select_backend"]
