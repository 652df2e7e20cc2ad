"""Judging: a measurement against its baseline (``judge``), results files against each other
(``comparison``), environments in interleaved rounds (``ab``), and the search for a release
(``bisect``)."""
