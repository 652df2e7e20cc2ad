"""pytest-benchmark's measurements judged by pytest-mlxperf's verdicts.

Two ways in:

- **The ``benchmark`` fixture in a ``pytest --mlxperf`` run.** After a test that used
  pytest-benchmark's fixture, its round times (pytest-benchmark keeps them per call: round time
  / iterations) become ``duration`` samples of one measurement of that test, which the plugin
  gates, stores and reports like any other. The fixture itself is unchanged but for one thing:
  it remembers what it timed (``record_calls``), so that a regression can be confirmed by timing
  the same function again with the same rounds, iterations, timer and GC setting. Only the
  fixture's public surface is used (its call, ``pedantic``, ``stats``, ``group``, ``param``,
  ``disabled``): its constructor's arguments change between releases (5.3 added two).
- **pytest-benchmark JSON files** (``--benchmark-json``, or ``.benchmarks/<machine>/NNNN_*.json``
  saved with ``--benchmark-save-data``) read by ``mlxperf compare`` / ``report``
  (``results_document``): each benchmark becomes a record of the same identity.

Samples. pytest-benchmark runs as many rounds as fit in ``--benchmark-max-time`` (often 10^4 to
10^5 rounds of a few microseconds each). Those rounds are not independent evidence: they come
from one process, whose luck they share, and the spread between processes is what a baseline
must absorb. Handing 10^5 of them to a significance test would make any shift beyond the
tolerance "significant", and would write megabytes of baselines. So the rounds, in the order
they ran, are cut into ``repetitions`` consecutive blocks (the plugin's ``--mlxperf-repetitions``,
default 5) and each block gives one sample: the median per-call time of its rounds. A
benchmark with no more rounds than that keeps every round as a sample.

Identity: the test, the benchmark's ``group`` and ``param``, the timer and whether the GC was
disabled (they change what is timed); rounds, iterations and the calibration options only
change how often, and samples are per call whatever they are. So does pytest-benchmark 5.3's
``--benchmark-precision`` (with ``--benchmark-confidence``): a rule that stops the rounds once
the mean's margin of error is small, leaving the calibration, the iterations per round and what
a round times alone. It is recorded (``BenchmarkRounds.precision``, the result's note), not
matched. But a few rounds that agree were timed within a millisecond, in one state of the
machine, so a confirmation does not repeat them: it times the rounds ``--benchmark-max-time``
allows (``confirmation_rounds``).

Nothing here imports pytest; pytest-benchmark is imported only once one of its fixtures exists.
"""

from __future__ import annotations

import functools
import inspect
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pytest_mlxperf import __version__
from pytest_mlxperf.host import machine
from pytest_mlxperf.measuring.base import Measurement, measurement_key
from pytest_mlxperf.measuring.callables import block_medians, round_runner
from pytest_mlxperf.measuring.progress import ProgressFn
from pytest_mlxperf.settings.options import OPTIONS_BY_NAME

BACKEND = "pytest-benchmark"
LABEL = "benchmark"
DEFAULT_BLOCKS: int = OPTIONS_BY_NAME["repetitions"].default
CALL_ATTRIBUTE = "mlxperf_call"  # set on a fixture by ``record_calls``: the ``TimedCall``
NO_RAW_SAMPLES = (
    "has no raw samples (stats.data), and a comparison needs them: pytest-benchmark writes them "
    "to --benchmark-json files, and to saved runs (.benchmarks/) only with --benchmark-save-data"
)


@dataclass(frozen=True)
class BenchmarkWorkload:
    """What a pytest-benchmark benchmark times, as far as its results say."""

    group: str | None
    param: str | None
    timer: str
    disable_gc: bool

    @property
    def label(self) -> str:
        return LABEL

    def identity(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BenchmarkRounds:
    """The raw record of a benchmark: pytest-benchmark's rounds, summarized (per-call
    seconds), and how the samples were made from them."""

    rounds: int
    iterations: int
    min: float
    median: float
    mean: float
    stddev: float
    samples: int
    source: str  # "pytest-benchmark", or "pytest-mlxperf" for a confirmation re-run
    # --benchmark-precision / --benchmark-confidence as pytest-benchmark recorded them (5.3+;
    # None: off). They stop benchmark(...)'s rounds early, not pedantic mode's fixed rounds.
    precision: float | None = None
    confidence: float | None = None


@dataclass(frozen=True)
class TimedCall:
    """What a ``benchmark(fn, *args, **kwargs)`` or ``benchmark.pedantic(...)`` call timed."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    setup: Callable[[], Any] | None = None
    teardown: Callable[..., Any] | None = None
    pedantic: bool = False  # fixed rounds: --benchmark-precision does not apply

    def arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments of one round: ``setup()``'s, where it returns them (pedantic mode)."""
        made = self.setup() if self.setup is not None else None
        return (tuple(made[0]), dict(made[1])) if made else (self.args, self.kwargs)


def measurement_name(nodeid: str) -> str:
    """The benchmark's name as pytest-benchmark's ``fullname`` minus the file:
    ``TestClass::test_x[param]``."""
    return nodeid.split("::", 1)[-1]


def benchmark_key(nodeid: str) -> str:
    """The key of a ``benchmark`` fixture's measurement within its test (``measurement_key``)."""
    return measurement_key(BACKEND, measurement_name(nodeid), LABEL)


def stopping_rule(options: Mapping[str, Any], where: str) -> tuple[float | None, float | None]:
    """``(precision, confidence)`` of pytest-benchmark 5.3's ``--benchmark-precision`` and
    ``--benchmark-confidence`` in a benchmark's ``options``; ``(None, None)`` when off, or
    before 5.3, which does not record them. ``ValueError`` names ``where`` for a value that is
    not a number."""
    values = options.get("precision"), options.get("confidence")
    for name, value in zip(("precision", "confidence"), values, strict=True):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{where}: options.{name} is {value!r}, not a number")
    precision, confidence = values
    # pytest-benchmark ignores the pair unless both are set
    return (float(precision), float(confidence)) if precision and confidence else (None, None)


def _measurement(
    name: str,
    workload: BenchmarkWorkload,
    per_call: Sequence[float],
    iterations: int,
    blocks: int,
    source: str,
    stopping: tuple[float | None, float | None],
) -> Measurement:
    samples = block_medians(per_call, blocks)
    rounds = BenchmarkRounds(
        rounds=len(per_call),
        iterations=iterations,
        min=min(per_call),
        median=statistics.median(per_call),
        mean=statistics.fmean(per_call),
        stddev=statistics.stdev(per_call) if len(per_call) > 1 else 0.0,
        samples=len(samples),
        source=source,
        precision=stopping[0],
        confidence=stopping[1],
    )
    return Measurement(
        backend=BACKEND,
        model={"name": name},
        workload=workload,
        samples={"duration": samples},
        raw=[rounds],
        wall_time=sum(per_call) * iterations,
    )


# --------------------------------------------------------------------------- the fixture


def benchmark_fixture(funcargs: Mapping[str, Any]) -> Any | None:
    """The test's pytest-benchmark ``benchmark`` fixture, or ``None`` (no such fixture, another
    plugin's ``benchmark``, or pytest-benchmark not installed)."""
    candidate = funcargs.get("benchmark")
    if candidate is None:
        return None
    try:
        from pytest_benchmark.fixture import BenchmarkFixture
    except ImportError:
        return None
    return candidate if isinstance(candidate, BenchmarkFixture) else None


@functools.cache
def recording_fixture_class() -> type:
    """pytest-benchmark's fixture class with one addition: each use records its ``TimedCall``
    (its timing is pytest-benchmark's own). It defines no constructor and passes every
    argument of a call through, so it works whatever the installed release's constructor and
    ``pedantic`` take; ``pedantic``'s arguments are read by name from that release's own
    signature."""
    from pytest_benchmark.fixture import BenchmarkFixture

    class RecordingBenchmarkFixture(BenchmarkFixture):  # type: ignore[misc]
        def __call__(self, function_to_benchmark: Any, *args: Any, **kwargs: Any) -> Any:
            setattr(self, CALL_ATTRIBUTE, TimedCall(function_to_benchmark, args, kwargs))
            return super().__call__(function_to_benchmark, *args, **kwargs)

        def pedantic(self, *args: Any, **kwargs: Any) -> Any:
            given = inspect.signature(super().pedantic).bind(*args, **kwargs)
            given.apply_defaults()
            a = given.arguments
            teardown = a.get("teardown")  # pytest-benchmark 4 has none
            call = TimedCall(
                a["target"], tuple(a["args"]), dict(a["kwargs"] or {}), a["setup"], teardown, True
            )
            setattr(self, CALL_ATTRIBUTE, call)
            return super().pedantic(*args, **kwargs)

    return RecordingBenchmarkFixture


def record_calls(fixture: Any) -> None:
    """Make ``fixture`` (a plain pytest-benchmark fixture) remember what it times."""
    from pytest_benchmark.fixture import BenchmarkFixture

    if type(fixture) is BenchmarkFixture:
        fixture.__class__ = recording_fixture_class()


def recorded_call(fixture: Any) -> TimedCall | None:
    """What the fixture timed, if ``record_calls`` saw it."""
    call = getattr(fixture, CALL_ATTRIBUTE, None)
    return call if isinstance(call, TimedCall) else None


def has_rounds(fixture: Any) -> bool:
    """Whether the fixture timed rounds: not when pytest-benchmark is disabled
    (``--benchmark-disable``, or under xdist: the function then runs once, untimed), nor when
    the test did not use it."""
    return not fixture.disabled and fixture.stats is not None and bool(fixture.stats.stats.data)


def _fixture_workload(fixture: Any) -> BenchmarkWorkload:
    options = fixture.stats.options
    timer = options.get("timer")
    return BenchmarkWorkload(
        group=fixture.group,
        param=fixture.param,
        timer=getattr(timer, "__name__", str(timer)),
        disable_gc=bool(options.get("disable_gc")),
    )


def _fixture_precision(fixture: Any) -> tuple[float | None, float | None]:
    """The stopping rule that decided the fixture's rounds: none in pedantic mode."""
    call = recorded_call(fixture)
    if call is not None and call.pedantic:
        return None, None
    return stopping_rule(fixture.stats.options, "the benchmark fixture")


def fixture_measurement(fixture: Any, nodeid: str, blocks: int) -> Measurement:
    """The measurement of a fixture that timed rounds (see ``has_rounds``)."""
    return _measurement(
        measurement_name(nodeid),
        _fixture_workload(fixture),
        fixture.stats.stats.data,
        fixture.stats.iterations,
        blocks,
        BACKEND,
        _fixture_precision(fixture),
    )


def confirmation_rounds(fixture: Any) -> int:
    """How many rounds a confirmation times: as many as the fixture did, unless
    ``--benchmark-precision`` stopped them early; then as many as ``--benchmark-max-time``
    allows, counted as pytest-benchmark counts them (max time / round time, at least
    ``--benchmark-min-rounds``). Rounds stopped early because they agreed were timed in a
    moment, one state of a shared machine: here an unchanged 60 us function measured +83% in
    the 5 rounds the rule stopped at, and a confirmation of 5 rounds confirmed it."""
    stats = fixture.stats
    rounds = len(stats.stats.data)
    if _fixture_precision(fixture)[0] is None:
        return rounds
    round_time = statistics.median(stats.stats.data) * stats.iterations
    budget = math.ceil(float(stats.options["max_time"]) / round_time) if round_time > 0 else 0
    return max(rounds, int(stats.options.get("min_rounds") or 0), budget)


def retime(fixture: Any, call: TimedCall, nodeid: str, blocks: int) -> Measurement:
    """Time ``call`` again as the fixture did (iterations per round, timer and GC setting;
    pedantic ``setup`` / ``teardown`` around every round; ``confirmation_rounds`` rounds): a
    fresh measurement to confirm a regression with."""
    stats = fixture.stats
    rounds, iterations = confirmation_rounds(fixture), stats.iterations
    timer, disable_gc = stats.options["timer"], bool(stats.options.get("disable_gc"))
    per_call = []
    for _ in range(rounds):
        args, kwargs = call.arguments()
        seconds = round_runner(call.fn, args, kwargs, timer, disable_gc)(iterations)
        per_call.append(seconds / iterations)
        if call.teardown is not None:
            call.teardown(*args, **kwargs)
    return _measurement(
        measurement_name(nodeid),
        _fixture_workload(fixture),
        per_call,
        iterations,
        blocks,
        "pytest-mlxperf",
        (None, None),  # a fixed number of rounds
    )


def take_measurements(
    fixture: Any, nodeid: str, blocks: int
) -> tuple[Callable[[ProgressFn | None], Measurement], bool]:
    """A ``take`` for ``PerfSession.gate``: the fixture's own measurement first, then fresh
    re-timings of its recorded call (to confirm a regression); and whether re-timing is
    possible (it is not if ``record_calls`` did not see the call). Progress is not shown:
    pytest-benchmark shows its own."""
    first = [fixture_measurement(fixture, nodeid, blocks)]
    call = recorded_call(fixture)

    def take(progress: ProgressFn | None) -> Measurement:
        if first:
            return first.pop()
        assert call is not None  # the caller turns confirmation off otherwise
        return retime(fixture, call, nodeid, blocks)

    return take, call is not None


def timing_note(fixture: Any, blocks: int) -> str:
    """How the samples were made from the fixture's rounds, for the result's notes."""
    rounds = len(fixture.stats.stats.data)
    precision, confidence = _fixture_precision(fixture)
    until = (
        ""
        if precision is None or confidence is None
        else f" (--benchmark-precision: until the mean's margin of error was within "
        f"±{precision * 100:g}% at {confidence * 100:g}% confidence, or --benchmark-max-time)"
    )
    return (
        f"timed by pytest-benchmark: {rounds} rounds x {fixture.stats.iterations} "
        f"iteration(s){until}, judged by pytest-mlxperf on {min(rounds, blocks)} samples "
        "(median per-call time of consecutive blocks of rounds)"
    )


def _compare_fail_text(checks: Sequence[Any]) -> str:
    def one(check: Any) -> str:
        percent = type(check).__name__.startswith("Percentage")
        return f"{check.field}:{check.threshold}{'%' if percent else ''}"

    return " ".join(f"--benchmark-compare-fail={one(c)}" for c in checks)


def gate_summary(
    records: Sequence[Mapping[str, Any]], not_gated: Sequence[str], compare_fail: Any
) -> list[str]:
    """Terminal-summary lines that say which gate judged pytest-benchmark's benchmarks."""
    lines = []
    gated = sum(r["backend"] == BACKEND for r in records)
    if gated:
        lines.append(
            f"{gated} pytest-benchmark benchmark(s) gated by pytest-mlxperf: per test, a "
            "regression is beyond tolerance and significant (Mann-Whitney) and fails its test"
        )
        if compare_fail:
            lines.append(
                f"{_compare_fail_text(compare_fail)} was given too: pytest-benchmark applies it "
                "after the tests to one summary value per benchmark, without statistics, and "
                "fails the whole session; a 'Performance has regressed' error is its verdict"
            )
        else:
            lines.append("pytest-benchmark's own gate (--benchmark-compare-fail) was not used")
    if not_gated:
        lines.append(
            f"{len(not_gated)} test(s) with pytest-benchmark's fixture not gated, nothing timed "
            "(--benchmark-disable, or disabled under xdist): " + ", ".join(not_gated)
        )
    return lines


# --------------------------------------------------------------------------- JSON files


def is_pytest_benchmark_document(data: Any) -> bool:
    """Whether parsed JSON is pytest-benchmark's (``--benchmark-json`` or a saved run)."""
    return (
        isinstance(data, dict)
        and isinstance(data.get("benchmarks"), list)
        and isinstance(data.get("machine_info"), dict)
    )


def _fingerprint(info: Mapping[str, Any]) -> dict[str, Any]:
    """pytest-mlxperf's machine fingerprint from pytest-benchmark's ``machine_info``: the
    fingerprint itself for a file ``mlxperf export`` wrote; otherwise the same fields, but
    without the memory size, which pytest-benchmark does not record."""
    exported = info.get("mlxperf_machine")
    if isinstance(exported, dict):
        return exported
    cpu = info.get("cpu") if isinstance(info.get("cpu"), dict) else {}
    return {
        "system": str(info.get("system") or "unknown"),
        "os_major": str(info.get("release") or "").split(".")[0],
        "arch": str(info.get("machine") or "unknown"),
        "cpu": cpu.get("brand_raw") or info.get("processor") or None,
        "cores": cpu.get("count"),
        "memory_gib": None,
    }


def _record(index: int, bench: Any, provenance: dict[str, Any], blocks: int) -> dict[str, Any]:
    where = f"benchmarks[{index}]"
    if not isinstance(bench, dict) or not isinstance(bench.get("stats"), dict):
        raise ValueError(f"{where} is not a benchmark with stats")
    fullname = bench.get("fullname")
    if not isinstance(fullname, str) or not fullname:
        raise ValueError(f"{where} has no fullname")
    data = bench["stats"].get("data")
    if not isinstance(data, list) or not data:
        raise ValueError(f"benchmark {fullname} {NO_RAW_SAMPLES}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in data):
        raise ValueError(f"benchmark {fullname}: stats.data holds something other than numbers")
    options = bench.get("options") if isinstance(bench.get("options"), dict) else {}
    workload = BenchmarkWorkload(
        group=bench.get("group"),
        param=bench.get("param"),
        timer=str(options.get("timer")),
        disable_gc=bool(options.get("disable_gc")),
    )
    iterations = bench["stats"].get("iterations")
    m = _measurement(
        measurement_name(fullname),
        workload,
        data,
        iterations if isinstance(iterations, int) and iterations > 0 else 1,
        blocks,
        BACKEND,
        stopping_rule(options, f"benchmark {fullname}"),
    )
    extra = bench.get("extra_info") if isinstance(bench.get("extra_info"), dict) else {}
    packages = extra.get("packages") if isinstance(extra.get("packages"), dict) else {}
    return {
        "test": fullname,
        "key": benchmark_key(fullname),
        "backend": m.backend,
        "model": m.model,
        "workload": workload.identity(),
        "workload_label": workload.label,
        "warmup": 0,
        "output_fingerprint": None,
        "wall_time": m.wall_time,
        "load_time": None,
        "samples": m.samples,
        "medians": {"duration": statistics.median(m.samples["duration"])},
        "raw": [asdict(r) for r in m.raw],
        "verdict": "new",
        "comparisons": [],
        "notes": [],
        "provenance": {**provenance, "packages": packages},
        "saved": False,
        "tolerances": {},
        "canary": None,
    }


def results_document(data: Mapping[str, Any], blocks: int = DEFAULT_BLOCKS) -> dict[str, Any]:
    """A pytest-mlxperf results document from a parsed pytest-benchmark JSON file: one record
    per benchmark, its samples made as in a ``pytest --mlxperf`` run. ``ValueError`` says what
    is wrong (for instance a saved run without raw samples)."""
    info = data["machine_info"]
    commit = data.get("commit_info") if isinstance(data.get("commit_info"), dict) else {}
    provenance = {
        "python": info.get("python_version"),
        "os": f"{info.get('system')} {info.get('release')}",
        "git_commit": commit.get("id"),
        "date": data.get("datetime"),
        "pytest_benchmark": data.get("version"),
    }
    if not data["benchmarks"]:
        raise ValueError("holds no benchmarks")
    fingerprint = _fingerprint(info)
    return {
        "pytest_mlxperf": __version__,
        "machine": fingerprint,
        "machine_id": machine.machine_id(fingerprint),
        "results": [
            _record(i, bench, provenance, blocks) for i, bench in enumerate(data["benchmarks"])
        ],
    }
