"""The cached partitioner places every key exactly where Kafka's default partitioner does."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as reference_murmur2
from hypothesis import given
from hypothesis import strategies as st

from consumer.kafka.partitioner import CachedPartitioner, murmur2


@given(st.lists(st.binary(min_size=1, max_size=40), max_size=60), st.integers(1, 12))
def test_keys_go_where_the_default_partitioner_puts_them(keys: list[bytes], count: int) -> None:
    partitions = list(range(count))
    cached = CachedPartitioner(max_keys=7)  # small: the memory starts over several times
    default = DefaultPartitioner()
    for key in keys + keys:
        assert cached(key, partitions, partitions) == default(key, partitions, partitions)


def test_a_record_without_key_goes_to_an_available_partition() -> None:
    assert CachedPartitioner()(None, [0, 1, 2], [2]) == 2


@given(st.binary(max_size=70))
def test_murmur2_is_kafkas_for_every_length(key: bytes) -> None:
    assert murmur2(key) == reference_murmur2(key)


def test_murmur2_matches_kafkas_published_values() -> None:
    # From Kafka's UtilsTest.testMurmur2 (Java ints, here as unsigned 32-bit values).
    assert murmur2(b"21") & 0xFFFFFFFF == -973932308 & 0xFFFFFFFF
    assert murmur2(b"foobar") & 0xFFFFFFFF == -790332482 & 0xFFFFFFFF
    assert murmur2(b"a-little-bit-long-string") & 0xFFFFFFFF == -985981536 & 0xFFFFFFFF
