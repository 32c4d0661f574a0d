"""A realistic, deterministic synthetic list of dishonest judgment debtors.

Why it exists: the real list (失信被执行人 and 限制消费人员, published by the
courts) is personal data that cannot be copied into tests, demos or load
tests, yet the loader, the index and the server must be exercised with rows
that look like the real feed: valid resident IDs and unified social credit
codes, minority names with a middle dot, organisations with their legal
representatives, case numbers in the courts' own form, expired and suspended
entries, exemption windows. ``gen-data`` and the benchmarks use this module to
write such a snapshot (DESIGN.md section 4, "List files"), ten million rows if
need be, and the same ``(count, seed, as_of)`` always gives the same bytes.

Speed: ten million rows must not take an afternoon. The check characters are
composed from tables learned once from ``shixin_check.domain.identity`` (see
``_Composer``), so the generator can never disagree with the validator; every
other choice is a look-up in a table of ``2**k`` slots indexed by one
``getrandbits(k)`` of a single ``random.Random(seed)``.
"""

from __future__ import annotations

from shixin_check.loader.synthetic.generator import iter_entries, never_listed_id
from shixin_check.loader.synthetic.writer import write_snapshot

__all__ = ["iter_entries", "never_listed_id", "write_snapshot"]
