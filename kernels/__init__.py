"""Hot-path operations of the engine: Triton kernels with pure-torch references."""
from kernels.dispatch import backend_for, requested_backend
from kernels.metadata import AttentionMetadata

__all__ = ["AttentionMetadata", "backend_for", "requested_backend"]
