"""Turn a fuzz input into decisions, deterministically and without atheris.

The targets read their inputs through :class:`ByteSource` rather than atheris'
``FuzzedDataProvider`` so that a saved input replays in the regression tests, where atheris
is not installed.  Once the input is used up every read returns zero (or empty), so any byte
string is a valid input and a shorter one is a simpler one: that is what lets libFuzzer and
our minimizer shrink findings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


class ByteSource:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, size: int) -> bytes:
        """Up to ``size`` bytes (fewer at the end of the input)."""
        size = max(0, size)
        out = self.data[self.pos : self.pos + size]
        self.pos += len(out)
        return out

    def uint(self, size: int) -> int:
        """A big-endian unsigned integer of ``size`` bytes (zero-padded at the end)."""
        return int.from_bytes(self.take(size).ljust(size, b"\0"), "big")

    def below(self, bound: int) -> int:
        """An integer in ``range(bound)`` (0 when bound <= 1; a byte is used all the same, so
        that an input's layout does not depend on the sizes of what it chooses from)."""
        if bound <= 1:
            self.take(1)
            return 0
        size = (bound.bit_length() + 7) // 8
        return self.uint(size) % bound

    def between(self, low: int, high: int) -> int:
        """An integer in ``[low, high]``."""
        return low + self.below(high - low + 1)

    def flag(self) -> bool:
        return bool(self.uint(1) & 1)

    def choice(self, options: Sequence[T]) -> T:
        return options[self.below(len(options))]

    def sized_bytes(self, limit: int) -> bytes:
        """A length (below ``limit``) and then that many bytes."""
        return self.take(self.below(limit))

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out
