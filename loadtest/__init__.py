"""Benchmarks: the in-process decision and the full RPC, beside a bare servicer.

Kept out of the unit tests (STYLE pattern 10); ``python -m loadtest.bench``
prints the figures that ``docs/benchmarks.md`` records.
"""
