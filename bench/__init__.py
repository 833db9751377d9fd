"""Benchmarks: scripts that measure and print a table (``kpvid-bench``)."""
