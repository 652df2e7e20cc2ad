"""Slow episodes of MLX decode on a Linux CPU, and what they are not.

On this project's 2-core VM, MLX decode on the tiny synthetic model runs at ~280 tok/s and, for
stretches of seconds, at ~205: a process whose few repetitions fall in such a stretch reads as
a 25% regression (the "bimodal process medians" of the A/B study). This study measures one
decode repetition after another, alternating windows in one process between MLX's threads free
on every core and pinned to one core, and for every repetition also records:

- a compute probe run on each core in turn (float32 multiply-adds over arrays that stay in L2,
  like the canary's compute kernel; best of 2): a core that got slower (frequency, a busy
  hyperthread sibling on the host) would show there;
- the steal time the kernel reports (``/proc/stat``): a vCPU the hypervisor took away;
- the process's CPU time over wall time: a process descheduled in its own VM.

    python benchmarks/decode_episodes.py --windows 8 --seconds 20

Linux only (CPU affinity). Run it alone: it measures the machine as much as MLX.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import numpy as np

from pytest_mlxperf import backends
from pytest_mlxperf.measuring.measure import measure
from pytest_mlxperf.measuring.workload import Workload

SLOW = 0.9  # a repetition below 90% of its mode's median is "slow"


@dataclass
class Rep:
    mode: str
    tps: float
    probe_ms: float  # the slowest core's probe, before the repetition
    steal: int  # jiffies
    cpu_per_wall: float


def set_threads(cpus: set[int]) -> None:
    """Every thread of this process (MLX's included) may run on ``cpus`` only."""
    for tid in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(tid), cpus)


def probe(sweeps: int, cpus: set[int]) -> float:
    """The slowest core's best-of-2 time of ``sweeps`` multiply-add sweeps, in ms."""
    a = np.linspace(0.5, 1.5, 32 * 1024, dtype=np.float32)
    b = np.full_like(a, 0.999)
    c = np.zeros_like(a)
    worst = 0.0
    for cpu in sorted(cpus):
        os.sched_setaffinity(0, {cpu})
        times = []
        for _ in range(2):
            start = time.perf_counter()
            for _ in range(sweeps):
                np.multiply(c, b, out=c)
                np.add(c, a, out=c)
            times.append(time.perf_counter() - start)
        worst = max(worst, min(times))
    return worst * 1e3


def steal() -> int:
    with open("/proc/stat") as f:
        return int(f.readline().split()[8])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=8, help="windows, free and pinned in turn")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of a window")
    parser.add_argument("--sweeps", type=int, default=300, help="probe size (sweeps)")
    args = parser.parse_args()

    every = os.sched_getaffinity(0)
    model = backends.load("mlx", "synth:tiny@4bit")
    workload = Workload(prompt_tokens=32, generation_tokens=64)
    measure(model, workload, warmup=1, repetitions=1)
    reps: list[Rep] = []
    for window in range(args.windows):
        mode, cpus = ("free", every) if window % 2 == 0 else ("one core", {min(every)})
        set_threads(cpus)
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            probe_ms = probe(args.sweeps, every)
            set_threads(cpus)
            s0, c0, w0 = steal(), time.process_time(), time.perf_counter()
            m = measure(model, workload, warmup=0, repetitions=1)
            s1, c1, w1 = steal(), time.process_time(), time.perf_counter()
            tps = m.samples["generation_tps"][0]
            reps.append(Rep(mode, tps, probe_ms, s1 - s0, (c1 - c0) / (w1 - w0)))
    set_threads(every)
    model.close()

    print(
        f"{args.windows} windows of {args.seconds:.0f} s, free and one core in turn; "
        f"{len(every)} cores"
    )
    print(
        "mode      reps  median tok/s  slow reps  slow tok/s  probe fast/slow ms  steal  cpu/wall"
    )
    medians = {}
    for mode in ("free", "one core"):
        rows = [r for r in reps if r.mode == mode]
        med = medians[mode] = statistics.median(r.tps for r in rows)
        slow = [r for r in rows if r.tps < SLOW * med]
        fast = [r for r in rows if r.tps >= SLOW * med]

        def mean(rs: list[Rep], field: str) -> str:
            return f"{statistics.mean(getattr(r, field) for r in rs):.2f}" if rs else "-"

        print(
            f"{mode:<8}  {len(rows):>4}  {med:>12.1f}  {len(slow):>4} "
            f"({len(slow) / len(rows):>4.0%})  {mean(slow, 'tps'):>10}  "
            f"{mean(fast, 'probe_ms'):>8} / {mean(slow, 'probe_ms'):<8}  "
            f"{sum(r.steal for r in rows):>5}  {mean(rows, 'cpu_per_wall'):>8}"
        )
    print(f"one core / free, medians: {medians['one core'] / medians['free']:.3f}")


if __name__ == "__main__":
    main()
