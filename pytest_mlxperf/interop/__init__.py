"""Other tools' formats and fixtures: pytest-benchmark's fixture and JSON."""
