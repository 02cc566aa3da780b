"""Benchmarks (issue 9): measurements, never pass/fail tests. Run with `make bench`."""
