"""A first look at a new machine: each installed backend's versions and build, and a smoke
test of it (one tiny measurement in a worker process, so a crash is reported, not suffered).

This is what to run first on a new CI runner (``mlxperf machine``): a llama.cpp build whose
AMX kernels crash there (``backends.llamacpp_build.crash_diagnosis``) shows up as that crash
with its diagnosis, and as whether the same backend runs with weight repacking off.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_mlxperf import backends
from pytest_mlxperf.measuring.measure import measure
from pytest_mlxperf.measuring.workload import Workload

SMOKE_SOURCE = "synth:tiny"
# the least that runs the whole path: a prefill and one decode
SMOKE_WORKLOAD = Workload(prompt_tokens=4, generation_tokens=2)


@dataclass
class Smoke:
    """One backend's smoke test: ``ok`` is ``None`` where it did not run (not installed, or
    not asked for); ``diagnosis`` is what is known of its crash; ``repack_off`` the same test
    with weight repacking off, run where the default died of the known AMX crash."""

    backend: str
    repack: bool | None
    ok: bool | None = None
    error: str | None = None
    diagnosis: str | None = None
    build: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    repack_off: Smoke | None = None

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "repack_off"}
        out["repack_off"] = self.repack_off.to_json() if self.repack_off else None
        return out

    @property
    def runs_with_repack_off_only(self) -> bool:
        """The default crashed as known and repacking off runs: what a user should set."""
        return not self.ok and self.repack_off is not None and bool(self.repack_off.ok)

    def describe(self) -> str:
        if self.ok is None:
            return f"not run: {self.error}" if self.error else "not run"
        if self.ok:
            return f"ok ({SMOKE_WORKLOAD.label} on {SMOKE_SOURCE}, {self.seconds:.1f} s)"
        lines = [f"FAILED: {self.error}"]
        if self.repack_off is not None:
            lines.append(f"with repacking off (--mlxperf-repack off): {self.repack_off.describe()}")
        return "\n".join(lines)


def smoke(
    backend: str,
    repack: bool | None = None,
    cache_dir: Path | None = None,
    timeout: float = 300.0,
    cpu_flags: frozenset[str] | None = None,
) -> Smoke:
    """Measure ``SMOKE_WORKLOAD`` once on ``SMOKE_SOURCE`` with ``backend`` in a worker. A
    llama.cpp default that dies of the known AMX crash is tried again with repacking off.
    ``cpu_flags``: the CPU's, for the diagnosis (this machine's when not given)."""
    from pytest_mlxperf.backends.worker import WorkerModel

    result = Smoke(backend, repack)
    try:
        backends.check_available(backend)
    except backends.BackendUnavailable as exc:
        result.error = str(exc)
        return result
    started = time.perf_counter()
    model = None
    try:
        model = WorkerModel(
            backend, SMOKE_SOURCE, cache_dir, timeout, repack=repack, cpu_flags=cpu_flags
        )
        measure(model, SMOKE_WORKLOAD, warmup=0, repetitions=1)
        result.ok = True
    except (backends.BackendError, ValueError, OSError) as exc:
        result.ok, result.error = False, str(exc)
        result.diagnosis = getattr(exc, "diagnosis", None)
    finally:
        if model is not None:  # what it reported of its build before any crash
            result.build = dict(model.build)
            model.close()
    result.seconds = time.perf_counter() - started
    if result.diagnosis and model is not None and model.repack is None:
        result.repack_off = smoke(backend, False, cache_dir, timeout, cpu_flags)
    return result
