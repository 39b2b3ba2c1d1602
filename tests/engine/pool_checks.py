"""Consistency checks of the KV block pool against the requests that hold blocks (for tests)."""
from __future__ import annotations

from pagebatch.engine.block_manager import BlockManager
from pagebatch.engine.request import Request


def check_invariants(blocks: BlockManager, live: list[Request]) -> None:
    """Assert the pool is consistent with the requests that hold blocks."""
    expected = [0] * blocks.num_blocks
    for req in live:
        assert len(req.block_table) == len(set(req.block_table)), f"{req} holds a block twice"
        for b in req.block_table:
            expected[b] += 1
    assert expected == blocks.ref_counts, "ref counts disagree with the block tables of live requests"
    assert set(blocks.free) == {b for b in range(blocks.num_blocks) if blocks.ref_counts[b] == 0}
    for h, b in blocks.cached.items():
        assert blocks.block_hash[b] == h, f"block {b} is cached under a hash it does not carry"
    assert sum(h is not None for h in blocks.block_hash) == len(blocks.cached)
