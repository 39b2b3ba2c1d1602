"""The custom_ids a batch file has shown so far, in a few dozen bytes each however many lines it has.

Finding a repeated custom_id needs every earlier one. Held as Python strings in a set, a million-line file
costs about 90 MiB; here each id is its 128-bit BLAKE2b digest in an open-addressing table of two arrays of
unsigned 64-bit integers (at most 2/3 full), about 16-32 MiB for a million. Two different ids are taken for
the same only when their 128-bit digests collide: about 1 chance in 10^26 for a file of a million lines.
"""
from __future__ import annotations

import hashlib
from array import array

_MAX_LOAD = 2 / 3


class SeenIds:
    def __init__(self, capacity: int = 1 << 12) -> None:
        size = 1 << max(4, (capacity - 1).bit_length())
        self._high, self._low = _zeros(size), _zeros(size)  # a slot whose low word is 0 is free
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, custom_id: str) -> bool:
        """Record ``custom_id``; False if it was seen before."""
        digest = hashlib.blake2b(custom_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        high = int.from_bytes(digest[:8], "little")
        low = int.from_bytes(digest[8:], "little") | 1  # never 0: 0 marks a free slot
        if not self._place(high, low):
            return False
        self._count += 1
        if self._count > len(self._low) * _MAX_LOAD:
            self._grow()
        return True

    def _place(self, high: int, low: int) -> bool:
        highs, lows = self._high, self._low
        mask = len(lows) - 1
        i = high & mask
        while True:
            slot = lows[i]
            if slot == 0:
                highs[i], lows[i] = high, low
                return True
            if slot == low and highs[i] == high:
                return False
            i = (i + 1) & mask

    def _grow(self) -> None:
        highs, lows = self._high, self._low
        self._high, self._low = _zeros(len(lows) * 2), _zeros(len(lows) * 2)
        for high, low in zip(highs, lows):
            if low:
                self._place(high, low)


def _zeros(size: int) -> array:
    return array("Q", bytes(8 * size))
