"""Our murmur2 is Kafka's: the same value as aiokafka's on random keys of every length."""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from shared.partitioner import murmur2, partition_for


def test_murmur2_equals_aiokafkas_for_every_length_and_random_bytes() -> None:
    rng = random.Random(20)
    keys = [rng.randbytes(n) for n in range(200) for _ in range(20)]
    keys += [f"SUB-{i:08d}".encode() for i in range(1000)] + ["用户-1".encode()]
    assert [murmur2(k) for k in keys] == [aiokafka_murmur2(k) for k in keys]


@pytest.mark.parametrize("partitions", [1, 3, 12, 540])
def test_partition_for_is_the_default_partitioners_choice(partitions: int) -> None:
    everyone = list(range(partitions))
    for i in range(2000):
        key = f"S{i}".encode()
        assert partition_for(key, partitions) == DefaultPartitioner()(key, everyone, everyone)
