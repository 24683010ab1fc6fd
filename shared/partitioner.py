"""Kafka's default partitioner hash (murmur2), as the Java client and aiokafka compute it.

``Outbox.send_many`` picks each record's partition itself (one record batch
per partition), with the hash the default partitioner uses, so a key lands on
the partition any Kafka client would choose. aiokafka's ``murmur2`` masks after
every operation and reads the key byte by byte: 1.5 µs for a subscriber id,
about 5 % of ingest's time for NDJSON batches (profiled). This one reads the
key's 4-byte words at once and gives the same value
(tests/test_partitioner.py compares the two on random keys).
"""

from __future__ import annotations

import struct

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
# Little-endian unsigned words, one format per word count of a usual key.
_WORDS = tuple(struct.Struct(f"<{n}I") for n in range(33))


def murmur2(data: bytes) -> int:
    """MurmurHash2 of ``data`` with Kafka's seed (the Java client's ``Utils.murmur2``)."""
    length = len(data)
    h = _SEED ^ length
    count = length // 4
    words = (
        _WORDS[count].unpack_from(data)
        if count < len(_WORDS)
        else struct.unpack_from(f"<{count}I", data)
    )
    for k in words:
        k = (k * _M) & _MASK
        k ^= k >> 24
        h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    tail = length & 3
    if tail:
        base = length - tail
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h = ((h ^ data[base]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition (0-based) the default partitioner gives ``key`` among ``partitions``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
