"""The scoring replica's cache of the feature states it wrote last.

Most batches then skip reading states back from PostgreSQL: a cached state is
current when its version (the row's ``events_applied``) is the stored one, which
the batch's row lock reads anyway (``service.lock_and_load``). Each entry is one
``bytes`` object: a 12-byte header (partition, version) and the state as
``services.scoring.codec`` encodes it, the same bytes the table stores. One
object per subscriber, no wrapper: at tens of thousands of subscribers per
replica the per-entry overhead is a good part of the memory (docs/performance.md).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from itertools import islice

from services.scoring.codec import decode, encode
from services.scoring.features import State

_HEADER = struct.Struct("<IQ")  # partition, version (events applied)


class StateCache:
    """Least-recently-written states, at most ``size`` of them."""

    def __init__(self, size: int) -> None:
        self.size = size
        # A plain dict, oldest write first (a write re-inserts its key at the end):
        # an OrderedDict's links cost another 50 bytes an entry.
        self._entries: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, subscriber_id: object) -> bool:
        return subscriber_id in self._entries

    def put(self, subscriber_id: str, partition: int, version: int, state: State) -> memoryview:
        """Encode and keep the state as this subscriber's at ``version``; return its bytes.

        The returned bytes (a view of the entry, without its header) are what the
        table stores: one encoding, one allocation kept, for both.
        """
        entry = encode(state, prefix=_HEADER.pack(partition, version))
        entries = self._entries
        entries.pop(subscriber_id, None)
        entries[subscriber_id] = entry
        if len(entries) > self.size:
            self._evict()
        return memoryview(entry)[_HEADER.size :]

    def _evict(self) -> None:
        """Drop the least recently written states, a sixty-fourth of the size at once.

        Finding a dict's oldest key walks past the slots its deleted keys left
        (until the dict next resizes); one walk per chunk, not per eviction.
        """
        excess = len(self._entries) - self.size + max(1, self.size // 64)
        for subscriber_id in list(islice(self._entries, excess)):
            del self._entries[subscriber_id]

    def versions(self, subscriber_ids: Iterable[str]) -> dict[str, int]:
        """The version held for each of these subscribers that is cached."""
        entries = self._entries
        return {
            sid: _HEADER.unpack_from(entries[sid])[1] for sid in subscriber_ids if sid in entries
        }

    def state(self, subscriber_id: str) -> State:
        """A fresh copy of the cached state (the caller may change it); KeyError if absent."""
        return decode(memoryview(self._entries[subscriber_id])[_HEADER.size :])

    def forget(self, partitions: set[int]) -> None:
        """Drop the states of subscribers on these partitions (this replica lost them)."""
        lost = [s for s, e in self._entries.items() if _HEADER.unpack_from(e)[0] in partitions]
        for subscriber_id in lost:
            del self._entries[subscriber_id]

    def clear(self) -> None:
        """Drop every state (after a failed batch: the database is the truth)."""
        self._entries.clear()
