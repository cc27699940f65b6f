"""Benchmarks: each prints its figures next to its baseline, as a ratio (see README)."""
