"""The CPU RMSNorm and rotary kernels (kernels/csrc/cpu_elementwise.cpp) against kernels.reference."""
import pytest
import torch

from pagebatch.kernels import cpu_elementwise, cpu_extension, reference

pytestmark = pytest.mark.skipif(not cpu_extension.available(), reason="the CPU extension cannot be built here")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if expected.dtype == torch.float32:
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    else:  # rounded as the reference rounds: equal but where the float32 sum of squares rounds another way
        mismatched = (actual != expected).float().mean().item()
        assert mismatched < 0.002, mismatched
        torch.testing.assert_close(actual.float(), expected.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 64), (37, 576), (300, 64), (5, 3, 16)])
def test_rms_norm(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    x = (torch.randn(shape) * 3).to(dtype)
    weight = (1 + torch.randn(shape[-1]) * 0.1).to(dtype)
    assert_matches(cpu_elementwise.rms_norm(x, weight, 1e-5), reference.rms_norm(x, weight, 1e-5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_with_residual_returns_the_sum(dtype: torch.dtype) -> None:
    x, residual = torch.randn(70, 576).to(dtype), torch.randn(70, 576).to(dtype)
    weight = torch.rand(576).to(dtype)
    out, summed = cpu_elementwise.rms_norm(x, weight, 1e-6, residual)
    ref_out, ref_sum = reference.rms_norm(x, weight, 1e-6, residual)
    assert torch.equal(summed, ref_sum)
    assert_matches(out, ref_out)


def test_rms_norm_of_a_non_contiguous_view() -> None:
    qkv = torch.randn(9, 4 * 16 + 2 * 2 * 16)
    q = qkv[:, : 4 * 16].reshape(9, 4, 16)  # a view with a row stride, as the decoder's q/k norms see it
    weight = torch.rand(16)
    assert_matches(cpu_elementwise.rms_norm(q, weight, 1e-6), reference.rms_norm(q, weight, 1e-6))


def rope_cache(max_pos: int, dim: int) -> torch.Tensor:
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    angles = torch.outer(torch.arange(max_pos).float(), inv_freq)
    return torch.cat((angles.cos(), angles.sin()), dim=-1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,dim", [(4, 2, 16), (9, 3, 64), (8, 8, 128)])
def test_rotary_embedding(dtype: torch.dtype, heads: int, kv_heads: int, dim: int) -> None:
    tokens = 50
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim).to(dtype)
    q, k, _ = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)  # strided views, as in the decoder
    q, k = q.reshape(tokens, heads, dim), k.reshape(tokens, kv_heads, dim)
    positions = torch.randint(0, 4096, (tokens,))
    cache = rope_cache(4096, dim)
    got_q, got_k = cpu_elementwise.rotary_embedding(positions, q, k, cache)
    want_q, want_k = reference.rotary_embedding(positions, q, k, cache)
    if dtype == torch.float32:
        torch.testing.assert_close(got_q, want_q, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got_k, want_k, rtol=1e-5, atol=1e-6)
    else:  # every product and sum rounded where the reference rounds: equal
        assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)


def test_partial_rotary_slices() -> None:
    q, k = torch.randn(6, 4, 32), torch.randn(6, 2, 32)
    positions, cache = torch.arange(6), rope_cache(16, 8)
    got = cpu_elementwise.rotary_embedding(positions, q[..., :8], k[..., :8], cache)
    want = reference.rotary_embedding(positions, q[..., :8], k[..., :8], cache)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_a_position_outside_the_cache_is_refused() -> None:
    q, k = torch.randn(2, 4, 16), torch.randn(2, 2, 16)
    with pytest.raises(RuntimeError, match="outside cos_sin_cache"):
        cpu_elementwise.rotary_embedding(torch.tensor([0, 99]), q, k, rope_cache(10, 16))
