"""The paged KV cache's bookkeeping: a fixed pool of blocks, prefix caching by hash chain, LRU eviction.

A full block is content-addressed by a hash over (the previous block's hash, its tokens), so a block's
hash names the whole prefix up to it. Blocks whose last user is gone keep their content and stay
findable until the pool needs them back; the least recently freed go first. A request's chain starts from
its ``salt`` (empty unless the model computes a request's keys differently by request, as LongRoPE does).
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the block-hash rule is also read where torch is not loaded (estimates)
    from pagebatch.engine.request import Request


def hash_block(parent: bytes, tokens: list[int]) -> bytes:
    return hashlib.blake2b(parent + array("q", tokens).tobytes(), digest_size=16).digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 salt: Callable[[Request], bytes] | None = None) -> None:
        self.num_blocks = num_blocks
        self.salt = salt
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self.cached: dict[bytes, int] = {}
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # front is evicted first
        self.committed: dict[str, int] = {}  # request id -> number of its blocks registered in the cache

    # -- queries ---------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free)

    @property
    def num_cached_free_blocks(self) -> int:
        return sum(1 for b in self.free if self.block_hash[b] is not None)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _request_hashes(self, req: Request, num_full_blocks: int) -> list[bytes]:
        hashes = req.block_hashes
        bs = self.block_size
        while len(hashes) < num_full_blocks:
            i = len(hashes)
            parent = hashes[-1] if hashes else (self.salt(req) if self.salt is not None else b"")
            hashes.append(hash_block(parent, req.token_ids[i * bs : (i + 1) * bs]))
        return hashes

    def prefix_hashes(self, req: Request) -> list[bytes]:
        """The hashes of the request's full blocks that prefix caching may share (all but its last token's)."""
        return self._request_hashes(req, (req.num_tokens - 1) // self.block_size)

    def match_prefix(self, req: Request) -> list[int]:
        """Cached blocks holding this request's leading full blocks; at least one token is left to compute."""
        if not self.enable_prefix_caching:
            return []
        hits = []
        for h in self.prefix_hashes(req):
            block = self.cached.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    # -- allocation --------------------------------------------------------------------------------
    def can_admit(self, hits: list[int], num_tokens: int) -> bool:
        reclaimed = sum(1 for b in hits if self.ref_counts[b] == 0)
        return self.blocks_for(num_tokens) - len(hits) + reclaimed <= len(self.free)

    def admit(self, req: Request, hits: list[int], num_tokens: int) -> None:
        """Give a waiting request its cached prefix blocks and fresh blocks up to num_tokens."""
        assert not req.block_table
        for b in hits:
            if self.ref_counts[b] == 0:
                del self.free[b]
            self.ref_counts[b] += 1
        req.block_table = list(hits)
        self.committed[req.request_id] = len(hits)
        self.grow(req, num_tokens)

    def can_grow(self, req: Request, num_tokens: int) -> bool:
        return self.blocks_for(num_tokens) - len(req.block_table) <= len(self.free)

    def grow(self, req: Request, num_tokens: int) -> None:
        for _ in range(self.blocks_for(num_tokens) - len(req.block_table)):
            block, _ = self.free.popitem(last=False)
            old = self.block_hash[block]
            if old is not None:
                del self.cached[old]
                self.block_hash[block] = None
            self.ref_counts[block] = 1
            req.block_table.append(block)

    def commit(self, req: Request) -> None:
        """Register the request's newly completed blocks in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        done = self.committed.get(req.request_id, 0)
        full = req.num_computed_tokens // self.block_size
        if full <= done:
            return
        hashes = self._request_hashes(req, full)
        for i in range(done, full):
            block, h = req.block_table[i], hashes[i]
            if h not in self.cached and self.block_hash[block] is None:
                self.cached[h] = block
                self.block_hash[block] = h
        self.committed[req.request_id] = full

    def release(self, req: Request) -> None:
        """Drop the request's hold on its blocks; tail blocks are evicted before its prefix."""
        for block in reversed(req.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free[block] = None
                if self.block_hash[block] is None:
                    self.free.move_to_end(block, last=False)
        req.block_table = []
        self.committed.pop(req.request_id, None)

    def reset_prefix_cache(self) -> None:
        for h, block in list(self.cached.items()):
            if self.ref_counts[block] == 0:
                del self.cached[h]
                self.block_hash[block] = None
