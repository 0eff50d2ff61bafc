"""The producer's partitioner: Kafka's default for keyed records, remembered per key.

Outcomes are keyed by person, and people repeat (a backlog, a busy preference centre):
aiokafka's murmur2 is pure Python and was a visible share of the service's CPU. The partition
a key goes to is exactly what the default partitioner gives (what Java clients give too), so
consumers of the results topic can rely on key placement as usual. Keys that do not repeat
(a backfill of many people) still pay the hash, so :func:`murmur2` reads the key's words in
one ``struct`` pass instead of byte by byte: half the time of aiokafka's.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

#: Keys remembered before the memory starts over (bounds it whatever the key space).
MAX_KEYS = 100_000

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of ``data`` (``org.apache.kafka.common.utils.Utils.murmur2``)."""
    length = len(data)
    h = 0x9747B28C ^ length
    whole = length & ~3
    for (k,) in struct.iter_unpack("<I", data[:whole]):
        k = (k * _M) & _MASK
        k ^= k >> 24
        h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    rest = length - whole
    if rest:
        if rest == 3:
            h ^= data[whole + 2] << 16
        if rest >= 2:
            h ^= data[whole + 1] << 8
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


class CachedPartitioner:
    """A drop-in ``partitioner`` for ``AIOKafkaProducer`` (same choices as the default)."""

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self._hashes: dict[bytes, int] = {}
        self._max_keys = max_keys

    def __call__(
        self, key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
    ) -> int:
        if key is None:
            # As the default partitioner: any available partition.
            return random.choice(available or all_partitions)
        if len(all_partitions) == 1:
            return all_partitions[0]  # the same answer, without hashing the key
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= self._max_keys:
                self._hashes.clear()
            hashed = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[hashed % len(all_partitions)]
