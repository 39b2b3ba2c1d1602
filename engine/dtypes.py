"""Which dtype the engine computes in: what dtype='auto' means on each device."""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from pagebatch.engine.config import DTYPES

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpuinfo_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bfloat16 in hardware (x86 AVX512-BF16 or AMX-BF16).

    Elsewhere bfloat16 matmuls are emulated through float32 and run slower than float32 itself.
    torch's own CPU capability report first (torch >= 2.6), /proc/cpuinfo's flags otherwise.
    """
    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "NO AVX"):
        return False  # torch was built, or told (ATEN_CPU_CAPABILITY), to use no vector ISA at all
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is not None:
        try:
            caps = get_capabilities()
            return any(bool(caps.get(flag)) for flag in NATIVE_BF16_FLAGS)
        except Exception:  # noqa: BLE001 - a cpuinfo probe failure falls back to /proc/cpuinfo
            pass
    return bool(_cpuinfo_flags() & set(NATIVE_BF16_FLAGS))


def resolve_dtype(requested: str, checkpoint_dtype: str | None, device: torch.device) -> torch.dtype:
    """An explicit dtype as is. 'auto': on CPU bfloat16 where the CPU computes it natively, else float32;
    on an accelerator the checkpoint's own dtype (float32 when it names none or an unknown one)."""
    if requested != "auto":
        return DTYPES[requested]
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return DTYPES.get(checkpoint_dtype or "float32", torch.float32)


def bf16_emulated(dtype: torch.dtype, device: torch.device) -> bool:
    """bfloat16 on a CPU that does not compute it natively: torch's matmuls then run several times slower
    than float32 (~16 vs ~130 GFLOP/s on a 2-core AVX2 EPYC, torch 2.13)."""
    return device.type == "cpu" and dtype == torch.bfloat16 and not cpu_has_native_bf16()
