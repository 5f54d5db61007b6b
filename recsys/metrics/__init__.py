"""Metric functions: pure numpy on arrays, no I/O."""
