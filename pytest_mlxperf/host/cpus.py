"""The CPU cores a measuring process may run on (``--mlxperf-cpus``), Linux only.

Why: on a Linux CPU, MLX decode overlaps building the next token's graph with computing the
current one on two threads. Spread over two cores it is faster, and on this project's 2-core VM
it also drops, for seconds at a time, to about the speed of one core (11% of repetitions in
``benchmarks/decode_episodes.py``; neither steal time nor a slower core explains it). Confined
to one core it runs 20% slower but steadily (1% of repetitions). Gating on a small shared
runner may prefer steady over fast; the count is part of a measurement's identity, so results
of different counts are never compared.

A worker or server gets its cores before it starts any thread (``pin``, in the child), and
every thread it starts later inherits them. Nothing here imports a backend.
"""

from __future__ import annotations

import os


def allowed() -> frozenset[int] | None:
    """The cores this process may run on; ``None`` where the platform has no CPU affinity
    (macOS, Windows)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    return frozenset(os.sched_getaffinity(0))


def choose(count: int | None, available: frozenset[int] | None) -> frozenset[int] | None:
    """The first ``count`` of the ``available`` cores (``None``: no restriction); a count that
    cannot be had is refused with the reason."""
    if count is None:
        return None
    if available is None:
        raise ValueError(
            f"--mlxperf-cpus {count}: this platform cannot confine a process to cores (Linux "
            "only); leave it at 'all'"
        )
    if count > len(available):
        raise ValueError(
            f"--mlxperf-cpus {count}: this process may run on {len(available)} cores "
            f"({', '.join(map(str, sorted(available)))})"
        )
    return frozenset(sorted(available)[:count])


def identity(cores: frozenset[int] | None) -> dict[str, int]:
    """What a confinement adds to a model's or server's identity: the count of cores (a
    measurement on fewer cores is another measurement); nothing when there is none."""
    return {} if cores is None else {"cpus": len(cores)}


def pin(cores: frozenset[int] | None) -> None:
    """Confine the calling process (its threads to come included) to ``cores``."""
    if cores is not None:
        os.sched_setaffinity(0, cores)
