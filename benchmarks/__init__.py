"""Reproducible benchmarks: ``python -m benchmarks.NAME [--quick] [--out results]``."""
