"""Which code serves: each hot-path op's implementation and whether decode steps replay CUDA graphs.

Decided before the engine serves. The compiled kernels a model will use are run once against their torch
references (``kernels.self_check``) and a failing one is replaced by its reference for the process; the runner
checks a captured decode graph's replay against the eager step (``ModelRunner.check_decode_graphs``). The
result is logged at start, reported by ``LLMEngine.serving_path`` and published with the worker's telemetry to
``/metrics``, so an operator sees which path serves.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pagebatch.engine.models import DecoderModel, ModelSpec
from pagebatch.kernels.dispatch import KernelBackend
from pagebatch.kernels.self_check import CheckOutcome, KernelShapes, check_backend

# Backends whose kernels are compiled for this machine (Triton for the card; the C++ attention and MoE ops, built
# with -march=native for this CPU) and so are checked before serving; torch is the reference itself.
CHECKED_BACKENDS = ("triton", "cpu")


@dataclass
class ServingPath:
    kernels: str  # the backend chosen: triton | cpu | torch
    ops: dict[str, str]  # op -> triton | cpu | torch | torch-fallback
    cuda_graphs: str  # captured | padded-eager | eager-fallback | off
    cuda_graphs_detail: str = ""
    self_check: list[CheckOutcome] = field(default_factory=list)

    @property
    def fallbacks(self) -> list[str]:
        return sorted(op for op, impl in self.ops.items() if impl == "torch-fallback")

    def as_dict(self) -> dict:
        return {"kernels": self.kernels, "ops": dict(self.ops), "cuda_graphs": self.cuda_graphs,
                "cuda_graphs_detail": self.cuda_graphs_detail, "fallbacks": self.fallbacks,
                "self_check": [o.as_dict() for o in self.self_check]}


def kernel_shapes(spec: ModelSpec, block_size: int) -> KernelShapes:
    """The sizes the self-check probes a model's kernels with."""
    qk = ()
    if spec.qk_norm == "head":
        qk = (spec.head_dim,)
    elif spec.qk_norm == "full":
        qk = (spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim)
    moe = (spec.moe.num_experts, spec.moe.top_k, spec.moe.intermediate_size) if spec.moe is not None else None
    return KernelShapes(
        hidden_size=spec.hidden_size, num_heads=spec.num_heads, num_kv_heads=spec.num_kv_heads, head_dim=spec.head_dim,
        rotary_dim=spec.rope.rotary_dim, intermediate_size=spec.intermediate_size, block_size=block_size,
        windows=tuple(sorted({w for w in spec.layer_windows if w})), qk_norm_sizes=qk, moe=moe,
    )


def checked_kernels(model: DecoderModel, backend: KernelBackend, block_size: int
                    ) -> tuple[KernelBackend, list[CheckOutcome]]:
    """The backend to serve ``model`` with: compiled kernels that fail their self-check replaced by references."""
    if backend.name not in CHECKED_BACKENDS:
        return backend, []
    return check_backend(backend, model.required_ops(), kernel_shapes(model.spec, block_size), model.dtype, model.device)


def describe(model: DecoderModel, graphs_state: str, graphs_detail: str, checks: list[CheckOutcome]) -> ServingPath:
    backend = model.kernels
    return ServingPath(backend.name, {op: backend.implementation(op) for op in model.required_ops()}, graphs_state,
                       graphs_detail, list(checks))
