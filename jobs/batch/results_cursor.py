"""The cursor of results-while-running: what a client has already been given of a batch's result lines.

Two phases, one cursor. While a batch runs, lines come from finished shards, whole shards at a time, and
the cursor remembers which input lines were handed out (a bitmap, so lines finished in any order are each
given once). Once the batch has ended, lines come from its output and error files; the cursor then also
remembers how far into each file it has read (byte offsets), and a line already handed out while the batch
ran is skipped by its id. The token is opaque to clients: zlib-compressed, base64url, versioned.
"""
from __future__ import annotations

import base64
import binascii
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

_VERSION = 1
_HEADER = struct.Struct(">BBQQ")  # version, flags, output file offset, error file offset
_REJECTED = 1  # flag: prepare's rejected lines were handed out
MAX_TOKEN_CHARS = 64 * 1024
_MAX_RAW_BYTES = _HEADER.size + (1 << 20)  # a bitmap of 8 million lines: more than any batch may hold


class CursorError(ValueError):
    """A cursor this server did not issue (or from an older version)."""


@dataclass
class ResultsCursor:
    delivered: bytearray = field(default_factory=bytearray)  # bit n: input line n handed out from a shard
    rejected: bool = False  # the rejected lines (validation errors) were handed out
    output_offset: int = 0  # bytes of the final output file read
    errors_offset: int = 0  # bytes of the final error file read

    def has(self, line: int) -> bool:
        byte = line >> 3
        return byte < len(self.delivered) and bool(self.delivered[byte] & (1 << (line & 7)))

    def add(self, line: int) -> None:
        byte = line >> 3
        if byte >= len(self.delivered):
            self.delivered.extend(bytes(byte + 1 - len(self.delivered)))
        self.delivered[byte] |= 1 << (line & 7)

    def lines(self) -> Iterator[int]:
        for byte, bits in enumerate(self.delivered):
            while bits:
                low = bits & -bits
                yield byte * 8 + low.bit_length() - 1
                bits ^= low

    def encode(self) -> str:
        header = _HEADER.pack(_VERSION, _REJECTED if self.rejected else 0, self.output_offset, self.errors_offset)
        packed = zlib.compress(header + bytes(self.delivered.rstrip(b"\0")), 9)
        return base64.urlsafe_b64encode(packed).rstrip(b"=").decode()

    @classmethod
    def decode(cls, token: str | None) -> "ResultsCursor":
        if not token:
            return cls()
        if len(token) > MAX_TOKEN_CHARS:
            raise CursorError("the cursor is too long")
        try:
            inflate = zlib.decompressobj()
            raw = inflate.decompress(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)), _MAX_RAW_BYTES)
            if inflate.unconsumed_tail or not inflate.eof:
                raise ValueError("truncated or oversized")
            version, flags, output_offset, errors_offset = _HEADER.unpack_from(raw)
        except (binascii.Error, zlib.error, struct.error, ValueError):
            raise CursorError("the cursor is not one this server issued") from None
        if version != _VERSION:
            raise CursorError(f"the cursor is of version {version}; this server reads version {_VERSION}")
        return cls(bytearray(raw[_HEADER.size:]), bool(flags & _REJECTED), output_offset, errors_offset)
