"""The mixture-of-experts MLP of every backend: the Triton kernel (kernels/triton_moe.py, through the interpreter on
CPU), the CPU backend's expert-parallel C++ op (kernels/cpu_moe.py) and the reference (kernels.reference.fused_moe).

The oracle is the MLP computed token by token and expert by expert from the dense weights, the definition of a
mixture: sum_k w[t, k] * down_e(act(gate_e(x_t)) * up_e(x_t)) with e = ids[t, k]. Cases cover several expert
counts, top-k values and token counts (one token, fewer tokens than experts, more rows per expert than a block),
and experts that receive no token at all (routing forced onto a few experts).

Tolerances: fp32 2e-5 (abs and rel), fp16 5e-3.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagebatch.kernels import cpu_extension, cpu_moe, reference, triton_moe

TOL = {torch.float32: 2e-5, torch.float16: 5e-3}
CASES = [  # (experts, top_k, tokens)
    (4, 1, 1),
    (8, 2, 3),  # fewer assignments than experts: most get nothing
    (8, 2, 40),  # more rows per expert than one 16-row block
    (16, 4, 17),
    (3, 3, 9),  # every token to every expert
    (64, 8, 5),
]


def dense_moe(x, w13, w2, weights, ids, activation: str = "silu") -> torch.Tensor:
    act = {"silu": F.silu, "gelu_tanh": lambda g: F.gelu(g, approximate="tanh")}[activation]
    out = torch.zeros(x.shape, dtype=torch.float64)
    x64, w13_64, w2_64 = x.double(), w13.double(), w2.double()
    inter = w2.shape[2]
    for t in range(x.shape[0]):
        for k in range(ids.shape[1]):
            e = int(ids[t, k])
            h = w13_64[e] @ x64[t]
            out[t] += float(weights[t, k]) * (w2_64[e] @ (act(h[:inter]) * h[inter:]))
    return out


def make_case(experts: int, top_k: int, tokens: int, dtype: torch.dtype, device: str, skew: bool = False,
              hidden: int = 48, inter: int = 40):
    x = torch.randn(tokens, hidden).to(dtype)
    w13 = (torch.randn(experts, 2 * inter, hidden) * 0.2).to(dtype)
    w2 = (torch.randn(experts, hidden, inter) * 0.2).to(dtype)
    logits = torch.randn(tokens, experts)
    if skew:  # the first top_k + 1 experts win every token: the others receive none
        logits[:, : top_k + 1] += 100.0
    weights, ids = logits.softmax(-1).topk(top_k)
    return x.to(device), w13.to(device), w2.to(device), weights.to(dtype).to(device), ids.to(device)


def assert_matches(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.dtype == dtype
    torch.testing.assert_close(got.double().cpu(), want, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("skew", [False, True], ids=["spread", "idle-experts"])
@pytest.mark.parametrize("experts,top_k,tokens", CASES)
def test_reference_groups_by_expert(experts: int, top_k: int, tokens: int, skew: bool) -> None:
    """The CPU path (tokens grouped by expert, one grouped GEMM) is the mixture's definition."""
    x, w13, w2, weights, ids = make_case(experts, top_k, tokens, torch.float32, "cpu", skew)
    assert_matches(reference.fused_moe(x, w13, w2, weights, ids), dense_moe(x, w13, w2, weights, ids), torch.float32)


@pytest.mark.skipif(not cpu_extension.available(), reason="the CPU extension could not be built")
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("skew", [False, True], ids=["spread", "idle-experts"])
@pytest.mark.parametrize("experts,top_k,tokens", CASES)
def test_cpu_expert_parallel_op(experts: int, top_k: int, tokens: int, skew: bool, threads: int) -> None:
    """Experts spread over 1 or 3 threads (more threads than experts with work, in some cases)."""
    x, w13, w2, weights, ids = make_case(experts, top_k, tokens, torch.float32, "cpu", skew)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = cpu_moe.fused_moe(x, w13, w2, weights, ids)
    finally:
        torch.set_num_threads(before)
    assert_matches(got, dense_moe(x, w13, w2, weights, ids), torch.float32)


@pytest.mark.skipif(not cpu_extension.available(), reason="the CPU extension could not be built")
def test_cpu_op_rejects_offsets_out_of_range() -> None:
    x, w13, w2, weights, _ = make_case(4, 1, 3, torch.float32, "cpu")
    op = cpu_extension.load().expert_mlp
    for ends in ([1, 2, 3, 4], [2, 1, 3, 3], [0, 0, 0, 2]):  # past the rows, decreasing, not covering them all
        with pytest.raises(RuntimeError, match="ends"):
            op(x, w13, w2, torch.tensor(ends), weights[:, 0], 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("skew", [False, True], ids=["spread", "idle-experts"])
@pytest.mark.parametrize("experts,top_k,tokens", CASES)
def test_triton_kernel_matches(experts: int, top_k: int, tokens: int, skew: bool, dtype: torch.dtype, device: str) -> None:
    x, w13, w2, weights, ids = make_case(experts, top_k, tokens, dtype, device, skew)
    want = dense_moe(x.cpu().float(), w13.cpu().float(), w2.cpu().float(), weights.cpu().float(), ids.cpu())
    assert_matches(triton_moe.fused_moe(x, w13, w2, weights, ids), want, dtype)


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_activations_and_odd_sizes(activation: str, device: str) -> None:
    """Hidden and intermediate sizes that are no multiple of the tiles, both activations, both paths."""
    x, w13, w2, weights, ids = make_case(6, 2, 21, torch.float32, device, hidden=70, inter=23)
    want = dense_moe(x.cpu(), w13.cpu(), w2.cpu(), weights.cpu(), ids.cpu(), activation)
    assert_matches(triton_moe.fused_moe(x, w13, w2, weights, ids, activation), want, torch.float32)
    assert_matches(reference.fused_moe(x.cpu(), w13.cpu(), w2.cpu(), weights.cpu(), ids.cpu(), activation), want,
                   torch.float32)
    assert_matches(cpu_moe.fused_moe(x.cpu(), w13.cpu(), w2.cpu(), weights.cpu(), ids.cpu(), activation), want,
                   torch.float32)


def test_no_tokens(device: str) -> None:
    x, w13, w2, weights, ids = make_case(4, 2, 1, torch.float32, device)
    for fn in (triton_moe.fused_moe, reference.fused_moe, cpu_moe.fused_moe):
        out = fn(x[:0], w13, w2, weights[:0], ids[:0])
        assert out.shape == (0, x.shape[1])


def test_alignment_pads_each_expert_to_whole_blocks() -> None:
    """Each expert's assignments form whole 4-row blocks (padding marked T*K); an expert with none owns no block."""
    ids = torch.tensor([[2, 0], [2, 3], [0, 2]])  # expert 1 gets nothing
    sorted_ids, block_expert = triton_moe.align_by_expert(ids, num_experts=4, block_m=4)
    n = ids.numel()
    assert sorted_ids.numel() == -(-(n + 4 * 3) // 4) * 4
    runs = {}
    for b, e in enumerate(block_expert.tolist()):
        rows = sorted_ids[b * 4 : (b + 1) * 4].tolist()
        if e < 0:
            assert rows == [n] * 4
            continue
        real = [r for r in rows if r < n]
        assert all(ids.reshape(-1)[r] == e for r in real)
        runs.setdefault(e, []).extend(real)
    assert sorted(runs) == [0, 2, 3]
    assert sorted(r for rows in runs.values() for r in rows) == list(range(n))
