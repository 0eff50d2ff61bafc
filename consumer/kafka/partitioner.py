"""The producer's partitioner: Kafka's default for keyed records, remembered per key.

Outcomes are keyed by person, and people repeat (a backlog, a busy preference centre):
aiokafka's murmur2 is pure Python and was a visible share of the service's CPU. The partition
a key goes to is exactly what the default partitioner gives (what Java clients give too), so
consumers of the results topic can rely on key placement as usual.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from aiokafka.partitioner import murmur2

#: Keys remembered before the memory starts over (bounds it whatever the key space).
MAX_KEYS = 100_000


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
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= self._max_keys:
                self._hashes.clear()
            hashed = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[hashed % len(all_partitions)]
