"""Run the Triton kernels on CPU through Triton's interpreter.

Triton reads TRITON_INTERPRET when ``@triton.jit`` decorates a kernel, i.e. when the
``kernels.triton_*`` modules are first imported (setting it later, before a launch, is too late),
so it must be set here before any test module imports them. With TRITON_INTERPRET=0 on a CUDA
machine the same tests run the compiled kernels on the GPU (and include bf16).
"""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def device() -> str:
    if os.environ.get("TRITON_INTERPRET") != "1":
        if not torch.cuda.is_available():
            pytest.skip("TRITON_INTERPRET=0 needs a CUDA device")
        return "cuda"
    from triton.runtime.interpreter import InterpretedFunction

    from pagebatch.kernels import triton_norm

    if not isinstance(triton_norm._rms_norm_kernel, InterpretedFunction):
        pytest.fail("kernels.triton_* were imported before TRITON_INTERPRET=1 was set; run tests/kernels on its own")
    return "cpu"
