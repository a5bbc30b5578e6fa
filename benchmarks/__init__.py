"""Benchmarks: timings with a reference measured in the same run (see README.md)."""
