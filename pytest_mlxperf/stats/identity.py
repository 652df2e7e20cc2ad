"""Identity: what must be equal for two results to be compared (machine, backend, model,
workload), and how a difference is shown.

Provenance (package versions, Python, commit, date) is recorded and shown but never part of
the identity: an upgrade gate compares exactly "same identity, different provenance". The
baseline judgement and the cross-file comparison both explain a mismatch with ``differences``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def differences(before: Mapping[str, Any], after: Mapping[str, Any], prefix: str) -> list[str]:
    """``prefix + field: before -> after`` for every field whose value differs, sorted."""
    return [
        f"{prefix}{k}: {before.get(k)!r} -> {after.get(k)!r}"
        for k in sorted(set(before) | set(after))
        if before.get(k) != after.get(k)
    ]


def measurement_differences(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """What keeps two measurements (baseline entries or result records: both have ``backend``,
    ``model`` and ``workload``) from being comparable; empty if nothing."""
    out = differences({"backend": before["backend"]}, {"backend": after["backend"]}, "")
    out += differences(before["model"], after["model"], "model.")
    out += differences(before["workload"], after["workload"], "workload.")
    return out
