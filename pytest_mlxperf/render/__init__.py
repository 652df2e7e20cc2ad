"""Rendering results for people and for other tools: ``text`` (terminal tables), ``markdown``
(pull-request comments, ``$GITHUB_STEP_SUMMARY``), ``html`` (the self-contained report with
every sample plotted) and ``exports`` (Bencher's BMF, pytest-benchmark's JSON)."""
