"""A fixed-capacity ring buffer of float64 values: the window store of the rolling indicators.

Why numpy, and why a ``memoryview`` beside it: the values live in one preallocated
``float64`` array, so a window never allocates after construction and :meth:`RingBuffer.values`
hands numpy an ordered array to recompute from (the drift guards of the indicators do that).
Scalar reads and writes, though, are the hot path (one of each per update), and indexing a
numpy array from Python boxes every scalar into a ``numpy.float64``; the same memory seen
through a ``memoryview`` of format ``"d"`` reads and writes plain Python floats, about
twice as fast. Both views share one buffer.

Conventions: index 0 is the oldest value held, ``-1`` (or ``len - 1``) the newest;
:meth:`RingBuffer.push` on a full buffer evicts the oldest value and returns it, so a
running sum can subtract exactly the value that left.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import numpy.typing as npt

Float64Array = npt.NDArray[np.float64]


class RingBuffer:
    """The last ``capacity`` float values pushed, O(1) per push, oldest first in :meth:`values`."""

    __slots__ = ("_buf", "_capacity", "_cells", "_next", "_size")

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"ring buffer capacity must be a positive int, got {capacity!r}")
        self._capacity = capacity
        self._buf: Float64Array = np.zeros(capacity, dtype=np.float64)
        # Same memory as _buf; indexing it yields and takes Python floats (no numpy scalar boxing).
        self._cells = cast("memoryview[float]", self._buf.data)
        self._next = 0
        """Where the next value goes (when full: also where the oldest value is)."""
        self._size = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def full(self) -> bool:
        return self._size == self._capacity

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"RingBuffer(capacity={self._capacity}, values={self.values().tolist()!r})"

    def push(self, value: float) -> float | None:
        """Append ``value``; if the buffer was full, return the (oldest) value it evicted, else ``None``."""
        i = self._next
        cells = self._cells
        evicted: float | None
        if self._size == self._capacity:
            evicted = cells[i]
        else:
            evicted = None
            self._size += 1
        cells[i] = value
        i += 1
        self._next = 0 if i == self._capacity else i
        return evicted

    def last(self) -> float:
        """The newest value (``IndexError`` when empty)."""
        if self._size == 0:
            raise IndexError("last() of an empty ring buffer")
        i = self._next - 1
        return self._cells[i if i >= 0 else self._capacity - 1]

    def first(self) -> float:
        """The oldest value held (``IndexError`` when empty)."""
        if self._size == 0:
            raise IndexError("first() of an empty ring buffer")
        return self._cells[(self._next - self._size) % self._capacity]

    def __getitem__(self, index: int) -> float:
        """``self[0]`` is the oldest value, ``self[-1]`` the newest."""
        size = self._size
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError(f"ring buffer index out of range (holds {size})")
        return self._cells[(self._next - size + index) % self._capacity]

    def values(self) -> Float64Array:
        """A new array of the values held, oldest first (a copy: later pushes do not change it)."""
        size = self._size
        start = (self._next - size) % self._capacity
        if start + size <= self._capacity:
            return self._buf[start : start + size].copy()
        return np.concatenate((self._buf[start:], self._buf[: self._next]))

    def clear(self) -> None:
        """Forget every value (the capacity stays)."""
        self._next = 0
        self._size = 0
