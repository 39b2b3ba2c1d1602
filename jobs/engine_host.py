"""What jobs/ needs of an engine: the options a command line may set, and the handle it passes around.

The handle is a Protocol so the pipeline depends on what it uses (submit, abort, stats), not on
the engine's classes; ``start_engine`` builds the real one (``engine.EngineCoreClient``, or ``engine.EngineLoop``
in one process).
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol


class EngineHandle(Protocol):
    def submit(self, prompt: Any, params: Any = None, request_id: str | None = None, fairness_key: str = ""
               ) -> Future: ...
    def abort(self, request_id: str) -> None: ...
    def stats(self) -> Any: ...
    def serving_path(self) -> dict[str, Any]: ...
    def close(self) -> None: ...
    def is_alive(self) -> bool: ...
    def plan_request(self, prompt: Any, params: Any = None) -> Any: ...  # estimates: prompt tokens, most new tokens

    @property
    def block_size(self) -> int: ...

    @property
    def fatal_error(self) -> BaseException | None: ...

    @property
    def steps(self) -> int: ...


def _flag(help_text: str, **extra: Any) -> Any:
    return {"help": help_text, **extra}


@dataclass
class EngineOptions:
    """The EngineConfig fields a command line exposes (the model path comes separately).

    Each field's metadata is its flag's help: the CLI's flags are generated from these fields.
    """

    dtype: str = field(default="auto", metadata=_flag(
        "weights and activations: auto = bfloat16 on CPUs that compute it natively (AVX512-BF16/AMX), float32 on "
        "other CPUs, the checkpoint's dtype on GPUs",
        choices=["auto", "float32", "bfloat16", "float16"]))
    device: str = field(default="auto", metadata=_flag("cuda, cpu or auto (default)"))
    max_num_seqs: int = field(default=256, metadata=_flag("most requests in one engine step"))
    max_num_batched_tokens: int = field(default=2048, metadata=_flag("token budget of one engine step"))
    num_kv_blocks: int | None = field(default=None, metadata=_flag("KV cache blocks (default: sized from memory)"))
    enable_prefix_caching: bool = field(default=True, metadata=_flag("reuse the KV blocks of shared prompt prefixes"))
    commit_kv_pool: bool = field(default=True, metadata=_flag(
        "CPU: commit the KV cache's memory when the engine starts, so the process holds from its first request what "
        "it will hold at its millionth (--no-commit-kv-pool: as blocks are first used; the prefix cache then grows "
        "the process into the whole pool over a long file)"))
    kernels: str | None = field(default=None, metadata=_flag(
        "kernels: torch, triton, cpu (the C++ CPU decode attention) or auto (default: PAGEBATCH_KERNELS, else auto)",
        choices=["auto", "torch", "triton", "cpu"]))
    engine_process: bool = field(default=True, metadata=_flag(
        "run the engine's steps in a process of their own, so templating, tokenizing and building results never "
        "wait on a forward pass (--no-engine-process: one process)"))

    def engine_kwargs(self, default_kernels: str = "auto") -> dict[str, Any]:
        kwargs = asdict(self)
        kwargs["kernels"] = self.kernels or default_kernels
        del kwargs["engine_process"]  # how the engine is hosted, not how it runs
        return kwargs


def option_fields() -> tuple[Any, ...]:
    return fields(EngineOptions)


def served_name(model_path: str, name: str | None) -> str:
    if name:
        return name
    path = Path(model_path).resolve()
    return path.stem if path.suffix == ".gguf" else path.name


def start_engine(model_path: str, options: EngineOptions, default_kernels: str = "auto",
                 cache_dir: Path | None = None, name: str | None = None,
                 initializer: tuple[Callable[..., Any], tuple[Any, ...]] | None = None) -> EngineHandle:
    """Load the model (a .gguf file is converted once into ``cache_dir/gguf``) and start its engine loop: in a
    process of its own (``engine.EngineCoreClient``; ``initializer(*args)`` runs there first, e.g. logging) unless
    ``options.engine_process`` is off."""
    from pagebatch.engine.config import EngineConfig
    from pagebatch.engine.models import resolve_checkpoint

    checkpoint = resolve_checkpoint(model_path, cache_dir=None if cache_dir is None else cache_dir / "gguf")
    config = EngineConfig(model=str(checkpoint), served_model_name=served_name(model_path, name),
                          **options.engine_kwargs(default_kernels))
    if options.engine_process:
        from pagebatch.engine.core_client import EngineCoreClient

        return EngineCoreClient(config, initializer)
    from pagebatch.engine.engine import LLMEngine
    from pagebatch.engine.loop import EngineLoop

    return EngineLoop(LLMEngine(config))
