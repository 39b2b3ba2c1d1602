"""RMSNorm, rotary embedding, SiLU*mul, GELU-tanh*mul and the KV-cache write against kernels.reference.

Each kernel reproduces the reference's rounding points (e.g. the residual sum and the normalized
value are rounded to the activation dtype), so tolerances are about one unit in the last place:
  rms_norm / silu_and_mul / gelu_tanh_and_mul / rotary: fp32 1e-5, fp16 2e-3 (abs and rel)
  write_kv and the residual sum of rms_norm: exact
"""
from __future__ import annotations

import pytest
import torch

from pagebatch.kernels import cpu_attention
from pagebatch.kernels import dispatch, reference, triton_ops

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    tol = TOL[expected.dtype]
    torch.testing.assert_close(actual, expected, atol=tol, rtol=tol)


@DTYPES
@pytest.mark.parametrize("hidden", [64, 100])
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
def test_rms_norm(hidden: int, with_residual: bool, dtype: torch.dtype, device: str) -> None:
    x = (torch.randn(2, 3, hidden) * 3).to(dtype).to(device)
    weight = (torch.rand(hidden) + 0.5).to(dtype).to(device)
    residual = torch.randn(2, 3, hidden).to(dtype).to(device) if with_residual else None
    x_before = x.clone()
    got = triton_ops.rms_norm(x, weight, 1e-6, residual)
    want = reference.rms_norm(x, weight, 1e-6, residual)
    assert torch.equal(x, x_before)
    if with_residual:
        assert_close(got[0], want[0])
        assert torch.equal(got[1], want[1])
    else:
        assert_close(got, want)


def test_rms_norm_promotes_like_reference(device: str) -> None:
    """fp16 activations with an fp32 weight give an fp32 result, as in the reference."""
    x = torch.randn(5, 48).half().to(device)
    weight = torch.rand(48).to(device)
    assert_close(triton_ops.rms_norm(x, weight, 1e-5), reference.rms_norm(x, weight, 1e-5))


def cos_sin_cache(max_pos: int, head_dim: int) -> torch.Tensor:
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = torch.arange(max_pos).float()[:, None] * inv_freq[None, :]
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1)


@DTYPES
@pytest.mark.parametrize("heads", [(4, 2, 64), (8, 1, 128)], ids=["gqa2-d64", "gqa8-d128"])
def test_rotary_embedding(heads: tuple[int, int, int], dtype: torch.dtype, device: str) -> None:
    num_heads, num_kv_heads, head_dim = heads
    tokens = 9
    # q and k as strided views of one fused qkv projection, like the engine produces.
    qkv = torch.randn(tokens, num_heads + 2 * num_kv_heads, head_dim).to(dtype).to(device)
    q, k = qkv[:, :num_heads], qkv[:, num_heads : num_heads + num_kv_heads]
    positions = torch.tensor([0, 1, 2, 17, 5, 63, 40, 40, 8], device=device)
    cache = cos_sin_cache(64, head_dim).to(device)
    q_got, k_got = triton_ops.rotary_embedding(positions, q, k, cache)
    q_want, k_want = reference.rotary_embedding(positions, q, k, cache)
    assert_close(q_got, q_want)
    assert_close(k_got, k_want)


@DTYPES
@pytest.mark.parametrize("inter", [100, 1500])
def test_silu_and_mul(inter: int, dtype: torch.dtype, device: str) -> None:
    x = (torch.randn(7, 2 * inter) * 4).to(dtype).to(device)
    assert_close(triton_ops.silu_and_mul(x), reference.silu_and_mul(x))


@DTYPES
@pytest.mark.parametrize("inter", [100, 1500])
def test_gelu_tanh_and_mul(inter: int, dtype: torch.dtype, device: str) -> None:
    """Gemma's activation, over gates large enough that tanh saturates both ways."""
    x = (torch.randn(7, 2 * inter) * 4).to(dtype).to(device)
    x[0, :6] = torch.tensor([-60.0, -9.0, 0.0, 1e-4, 9.0, 60.0], dtype=dtype)
    assert_close(triton_ops.gelu_tanh_and_mul(x), reference.gelu_tanh_and_mul(x))


@DTYPES
def test_partial_rotary_on_leading_dims(dtype: torch.dtype, device: str) -> None:
    """Partial rotary (Phi-4-mini): the leading rotary dims of strided q/k views, with a cache of that width."""
    qkv = torch.randn(5, 4 + 2 * 2, 64).to(dtype).to(device)
    q, k = qkv[:, :4, :32], qkv[:, 4:6, :32]
    positions = torch.tensor([0, 3, 9, 63, 1], device=device)
    cache = cos_sin_cache(64, 32).to(device)
    for got, want in zip(triton_ops.rotary_embedding(positions, q, k, cache), reference.rotary_embedding(positions, q, k, cache)):
        assert_close(got, want)


@pytest.mark.parametrize(
    "src_dtype,cache_dtype",
    [(torch.float32, torch.float32), (torch.float16, torch.float16), (torch.float32, torch.float16)],
    ids=["fp32", "fp16", "fp32-into-fp16"],
)
def test_write_kv(src_dtype: torch.dtype, cache_dtype: torch.dtype, device: str) -> None:
    num_blocks, block_size, num_kv_heads, head_dim = 6, 8, 2, 64
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape).to(cache_dtype).to(device)
    v_cache = torch.randn(shape).to(cache_dtype).to(device)
    key = torch.randn(13, num_kv_heads, head_dim).to(src_dtype).to(device)
    value = torch.randn(13, num_kv_heads, head_dim).to(src_dtype).to(device)
    slots = torch.randperm(num_blocks * block_size)[:13].to(device)
    k_want, v_want = k_cache.clone(), v_cache.clone()
    reference.write_kv(key, value, k_want, v_want, slots)
    triton_ops.write_kv(key, value, k_cache, v_cache, slots)
    assert torch.equal(k_cache, k_want) and torch.equal(v_cache, v_want)


def test_write_kv_skips_negative_slots(device: str) -> None:
    """A slot of -1 (padding token) writes nothing; the other tokens land as in the reference."""
    k_cache = torch.zeros(2, 4, 1, 16, device=device)
    v_cache = torch.zeros(2, 4, 1, 16, device=device)
    key = torch.randn(3, 1, 16, device=device)
    value = torch.randn(3, 1, 16, device=device)
    slots = torch.tensor([5, -1, 2], device=device)
    k_want, v_want = k_cache.clone(), v_cache.clone()
    keep = torch.tensor([0, 2], device=device)
    reference.write_kv(key[keep], value[keep], k_want, v_want, slots[keep])
    triton_ops.write_kv(key, value, k_cache, v_cache, slots)
    assert torch.equal(k_cache, k_want) and torch.equal(v_cache, v_want)


def test_dispatch_selects_triton_ops() -> None:
    assert dispatch.backend_for("cpu", "triton") is triton_ops
    # auto on CPU: the C++ decode attention where it builds (kernels/cpu_attention.py), else the references
    assert dispatch.backend_for("cpu", "auto") is (cpu_attention if cpu_attention.available() else reference)
    assert dispatch.backend_for("cpu", "torch") is reference
    assert dispatch.backend_for("cuda", "auto") is triton_ops
    assert dispatch.select_backend("triton", "cpu").supports_cuda_graphs
    assert not dispatch.select_backend("torch", "cuda").supports_cuda_graphs
    for name in ("rms_norm", "rotary_embedding", "silu_and_mul", "gelu_tanh_and_mul", "write_kv", "paged_attention",
                 "fused_moe"):
        assert callable(getattr(triton_ops, name)) and callable(getattr(reference, name))
        assert callable(getattr(cpu_attention, name))

