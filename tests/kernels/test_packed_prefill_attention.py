"""Fresh prefill chunks of similar length attended in padded batches (kernels.packed_prefill_attention), against
the reference's row-by-row attention run in fp32 on the same inputs."""
from __future__ import annotations

import pytest
import torch

from pagebatch.kernels import cpu_attention, reference
from pagebatch.kernels.packed_prefill_attention import packed_prefill_attention, plan_packed
from tests.kernels.test_cpu_attention import TOL, fresh, make_batch

BLOCK = 16
# fresh prompts of 40-61 tokens (two groups), two short ones (another), a lone long one, a chunk after a cached
# prefix, and decodes
SPECS = [(40 + 3 * i, 40 + 3 * i) for i in range(8)] + [(9, 9), (8, 8), (300, 300), (90, 20), (70, 1), (5, 1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gqa", [(9, 3), (8, 8)])
def test_packed_groups_match_the_reference(dtype, gqa):
    torch.manual_seed(0)
    q, k_cache, v_cache, meta = make_batch(SPECS, *gqa, 32, BLOCK, dtype)
    scale = 32**-0.5
    expected = reference.paged_attention(q.float(), k_cache.float(), v_cache.float(), fresh(meta), scale)
    groups, rest = plan_packed(reference.plan_prefills(meta, BLOCK), meta.slot_mapping)
    assert sorted((g.batch, g.length) for g in groups) == [(2, 9), (2, 43), (6, 61)]  # 43 < 0.75 x 61
    assert sorted((q_len, ctx) for _, q_len, ctx, *_ in rest) == [(20, 90), (300, 300)]  # lone, and after a prefix
    out = torch.full_like(q, float("nan"))
    for group in groups:
        packed_prefill_attention(q, k_cache, v_cache, group, out, scale)
    rows = torch.cat([g.targets for g in groups])
    assert len(rows) == 8 * 40 + 3 * 28 + 17  # every real row once, no padding
    tol = TOL[dtype]
    torch.testing.assert_close(out[rows].float(), expected[rows], atol=tol, rtol=tol)
    untouched = torch.ones(len(q), dtype=torch.bool)
    untouched[rows] = False
    assert out[untouched].isnan().all()  # padding positions are never written back
    if cpu_attention.available():  # the whole backend: packed, per-chunk and decode rows together
        torch.testing.assert_close(cpu_attention.paged_attention(q, k_cache, v_cache, fresh(meta), scale).float(),
                                   expected, atol=tol, rtol=tol)


def test_padding_stays_within_a_quarter_of_each_group():
    specs = [(n, n) for n in (100, 90, 76, 75, 60, 12, 10)]
    q, k_cache, v_cache, meta = make_batch(specs, 4, 2, 16, BLOCK, torch.float32)
    groups, rest = plan_packed(reference.plan_prefills(meta, BLOCK), meta.slot_mapping)
    for g in groups:
        assert g.batch * g.length <= len(g.targets) / 0.75
    assert sum(len(g.targets) for g in groups) + sum(c[1] for c in rest) == sum(n for n, _ in specs)
