"""Shoal's benchmarks: `python -m bench.core` and `python -m bench.servers` (see RESULTS.md)."""
