"""Benchmark commands and side-by-side scripts; not used by serving."""
