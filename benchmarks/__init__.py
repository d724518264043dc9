"""Measured comparisons (not tests); see benchmarks/README.md for the command that runs them."""
