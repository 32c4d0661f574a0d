"""rbloom against pybloom-live, on the keys the index really holds.

The index puts the high 64 bits of each 128-bit keyed subject key in its
Bloom filter (``loader/index_memory.py``: ``hash_func=int``, error rate
0.001). The same keys as 16-byte big-endian ``bytes`` are what a filter over
raw digests would hold. pybloom-live turns any non-``str`` key into
``str(key).encode()`` before hashing, so a bytes key is hashed through its
repr (``b'\\x8f...'``, up to four times longer than the key) with one
SHA-384 per slice group: that, not the bit array, is its cost.

Per-operation figures are a plain Python loop over the keys divided by their
number (the loop's own ~30 ns included, for both libraries alike).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

ERROR_RATE = 0.001  # as loader/index_memory.py


def _per_op(fn: Callable[[Any], object], keys: Sequence[Any]) -> float:
    t0 = time.perf_counter()
    for k in keys:
        fn(k)
    return (time.perf_counter() - t0) / len(keys) * 1e6


def _hits(contains: Callable[[Any], bool], keys: Sequence[Any]) -> int:
    return sum(1 for k in keys if contains(k))


def _case(
    name: str,
    make: Callable[[], Any],
    present: Sequence[Any],
    absent: Sequence[Any],
    lookups: int,
) -> dict[str, Any]:
    bloom = make()
    add_us = _per_op(bloom.add, present)
    probe_hit = present[:lookups]
    probe_miss = absent[:lookups]
    contains = bloom.__contains__
    hit_us = _per_op(contains, probe_hit)
    miss_us = _per_op(contains, probe_miss)
    assert _hits(contains, probe_hit) == len(probe_hit), f"{name}: a false negative"
    false_pos = _hits(contains, probe_miss) / len(probe_miss)
    return {
        "case": name,
        "adds": len(present),
        "lookups": len(probe_hit),
        "add_us": add_us,
        "lookup_hit_us": hit_us,
        "lookup_miss_us": miss_us,
        "false_positive_rate": false_pos,
    }


def compare(n: int, lookups: int, seed: int = 11) -> list[dict[str, Any]]:
    """Each library filled with ``n`` keys, probed with ``lookups`` present and absent keys."""
    from pybloom_live import BloomFilter
    from rbloom import Bloom

    rng = random.Random(seed)
    keys = [rng.getrandbits(128) for _ in range(n + lookups)]
    present_int, absent_int = [k >> 64 for k in keys[:n]], [k >> 64 for k in keys[n:]]
    present_b = [k.to_bytes(16, "big") for k in keys[:n]]
    absent_b = [k.to_bytes(16, "big") for k in keys[n:]]

    def stable_bytes_hash(b: bytes) -> int:
        return int.from_bytes(b, "big", signed=True)  # fits rbloom's i128

    return [
        _case(
            "rbloom, 64-bit int, hash_func=int (our index)",
            lambda: Bloom(n, ERROR_RATE, hash_func=int),
            present_int,
            absent_int,
            lookups,
        ),
        _case(
            "rbloom, 16-byte bytes, default hash (process-salted)",
            lambda: Bloom(n, ERROR_RATE),
            present_b,
            absent_b,
            lookups,
        ),
        _case(
            "rbloom, 16-byte bytes, stable int.from_bytes hash",
            lambda: Bloom(n, ERROR_RATE, hash_func=stable_bytes_hash),
            present_b,
            absent_b,
            lookups,
        ),
        _case(
            "pybloom-live, 16-byte bytes (hashed via repr)",
            lambda: BloomFilter(capacity=n, error_rate=ERROR_RATE),
            present_b,
            absent_b,
            lookups,
        ),
        _case(
            "pybloom-live, 64-bit int (hashed via str)",
            lambda: BloomFilter(capacity=n, error_rate=ERROR_RATE),
            present_int,
            absent_int,
            lookups,
        ),
    ]
