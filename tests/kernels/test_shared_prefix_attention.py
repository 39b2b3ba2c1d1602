"""Prefill chunks that share cached prefix blocks, attended together (kernels.shared_prefix_attention), against
the reference's row-by-row attention run in fp32 on the same inputs."""
from __future__ import annotations

import pytest
import torch

from pagebatch.kernels import cpu_attention, reference
from pagebatch.kernels.shared_prefix_attention import grouped_prefill_attention, plan_groups
from tests.kernels.test_cpu_attention import TOL, fresh, make_batch

BLOCK = 16


def shared_batch(dtype: torch.dtype, gqa: tuple[int, int]):
    """Six prefill chunks whose tables share their first 8 blocks, one chunk that shares nothing, two decodes."""
    specs = [(200 + 7 * i, 3 + 5 * i) for i in range(6)] + [(150, 20), (180, 1), (90, 1)]
    torch.manual_seed(0)
    q, k_cache, v_cache, meta = make_batch(specs, *gqa, 64, BLOCK, dtype)
    for i in range(1, 6):
        meta.block_tables[i, :8] = meta.block_tables[0, :8]
    return q, k_cache, v_cache, meta


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gqa", [(9, 3), (8, 8)])
def test_grouped_chunks_match_the_reference(dtype, gqa):
    q, k_cache, v_cache, meta = shared_batch(dtype, gqa)
    scale = 64**-0.5
    expected = reference.paged_attention(q.float(), k_cache.float(), v_cache.float(), fresh(meta), scale)
    groups, rest = plan_groups(reference.plan_prefills(meta, BLOCK), BLOCK)
    assert len(groups) == 1 and len(groups[0].chunks) == 6 and groups[0].shared_len == 8 * BLOCK and len(rest) == 1
    out = torch.full_like(q, float("nan"))
    grouped_prefill_attention(q, k_cache, v_cache, groups[0], out, scale)
    rows = torch.cat([torch.arange(s, s + n) for s, n, *_ in groups[0].chunks])
    tol = TOL[dtype]
    torch.testing.assert_close(out[rows].float(), expected[rows], atol=tol, rtol=tol)
    if cpu_attention.available():  # the whole backend, decodes and the ungrouped chunk included
        torch.testing.assert_close(cpu_attention.paged_attention(q, k_cache, v_cache, meta, scale).float(), expected,
                                   atol=tol, rtol=tol)


def test_chunks_whose_queries_reach_into_the_shared_blocks_are_not_grouped():
    q, k_cache, v_cache, meta = shared_batch(torch.float32, (9, 3))
    meta.query_lens_cpu[1] = meta.context_lens_cpu[1]  # a chunk computing its whole prompt, shared blocks included
    _, rest = plan_groups(reference.plan_prefills(meta, BLOCK), BLOCK)
    assert any(q_len == meta.context_lens_cpu[1] for _, q_len, *_ in rest)
