"""fastlmk benchmarks: ``pytest benchmarks --benchmark-only`` (see conftest.py), ``python -m benchmarks.report``."""
