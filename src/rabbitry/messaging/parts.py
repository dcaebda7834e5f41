"""A long send cut in parts: :data:`SIZE` messages per write, each part a lazy view of the
items it holds, so that a part's items are encoded by the call that writes it, not before.
Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

from rabbitry.amqp.base import Outgoing

SIZE = 100
"""Messages per write when sending many."""


class LazyOutgoing(Sequence[Outgoing]):
    """Messages made only as they are asked for, one index at a time (:meth:`_at`); a slice
    is a list of those."""

    def _at(self, index: int) -> Outgoing:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> Outgoing: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Outgoing]: ...

    def __getitem__(self, index: int | slice) -> Outgoing | Sequence[Outgoing]:
        if isinstance(index, slice):
            return [self._at(i) for i in range(*index.indices(len(self)))]
        return self._at(index)


class Part(LazyOutgoing):
    """``items[i]`` for each ``i`` in ``positions``, each read (so encoded) once, when first
    asked for: by the call that writes this part, not before."""

    def __init__(self, items: Sequence[Outgoing], positions: list[int]) -> None:
        self._items = items
        self._positions = positions
        self._read: list[Outgoing | None] = [None] * len(positions)

    def __len__(self) -> int:
        return len(self._positions)

    def _at(self, index: int) -> Outgoing:
        item = self._read[index]
        if item is None:
            item = self._read[index] = self._items[self._positions[index]]
        return item


def parts(items: Sequence[Outgoing], todo: list[int]) -> list[tuple[list[int], Part]]:
    """``items[i]`` for each ``i`` in ``todo``, in parts of :data:`SIZE`: (positions, part)."""
    return [
        (positions, Part(items, positions))
        for positions in (todo[i : i + SIZE] for i in range(0, len(todo), SIZE))
    ]
