"""LensFlow benchmarks: `python -m benchmarks [NAME ...] [--quick]` (not part of the unit tests)."""
