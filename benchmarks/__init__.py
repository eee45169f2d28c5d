"""Benchmarks: long-running measurements, run as `python -m benchmarks.NAME`."""
