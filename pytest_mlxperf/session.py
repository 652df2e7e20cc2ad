"""Per-session state: settings, machine identity, loaded models, results and their verdicts.

The pytest plugin keeps one ``PerfSession`` in ``config.stash``; nothing here imports pytest.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pytest_mlxperf import backends, machine, memory
from pytest_mlxperf.baseline import BaselineStore, pooled_samples
from pytest_mlxperf.compare import MetricComparison, Verdict, compare_metric, overall
from pytest_mlxperf.config import Settings
from pytest_mlxperf.measure import Measurement, measure, time_callable
from pytest_mlxperf.metrics import METRICS
from pytest_mlxperf.worker import WorkerModel
from pytest_mlxperf.workload import Workload

# the packages whose versions a comparison of each backend shows
BACKEND_PACKAGES = {
    "mlx": ("mlx", "mlx-metal", "mlx-cpu", "mlx-lm"),
    "llamacpp": ("llama-cpp-python",),
}


def _diff(recorded: dict[str, Any], current: dict[str, Any], prefix: str) -> list[str]:
    keys = sorted(set(recorded) | set(current))
    return [
        f"{prefix}{k}: {recorded.get(k)!r} -> {current.get(k)!r}"
        for k in keys
        if recorded.get(k) != current.get(k)
    ]


def versions_line(backend: str, before: dict[str, str], after: dict[str, str]) -> str:
    """``mlx 0.20.0 -> 0.21.1, mlx-lm 0.20.1 -> 0.20.1``: the backend's packages on both sides."""
    parts = [
        f"{name} {before.get(name, '?')} -> {after.get(name, '?')}"
        for name in BACKEND_PACKAGES.get(backend, ())
        if name in before or name in after
    ]
    return ", ".join(parts) or "unknown"


@dataclass
class PerfResult:
    """One measurement of one test, judged against its baseline.

    Metric attributes (``prompt_tps``, ``generation_tps``, ``ttft``, ``peak_memory``) are the
    medians of the repetitions; ``samples`` has every repetition's value.
    """

    nodeid: str
    key: str
    measurement: Measurement
    load_time: float | None
    verdict: Verdict
    comparisons: list[MetricComparison]
    baseline_path: Path
    provenance: dict[str, Any]
    baseline_provenance: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    saved: bool = False

    @property
    def samples(self) -> dict[str, list[float]]:
        return self.measurement.samples

    @property
    def all_samples(self) -> dict[str, list[float]]:
        """The repetitions' samples plus the model's load time (one sample), where there is one."""
        extra = {} if self.load_time is None else {"load_time": [self.load_time]}
        return {**self.measurement.samples, **extra}

    def median(self, metric_name: str) -> float:
        return statistics.median(self.all_samples[metric_name])

    @property
    def prompt_tps(self) -> float:
        return self.median("prompt_tps")

    @property
    def generation_tps(self) -> float:
        return self.median("generation_tps")

    @property
    def ttft(self) -> float:
        return self.median("ttft")

    @property
    def peak_memory(self) -> float:
        return self.median("peak_memory")

    @property
    def regressions(self) -> list[MetricComparison]:
        return [c for c in self.comparisons if c.verdict is Verdict.REGRESSION]

    def report(self) -> str:
        """The full text of the verdict: what a failing test shows."""
        m = self.measurement
        head = (
            f"mlxperf {self.verdict.value}: {self.nodeid} "
            f"[{m.backend} {m.model['name']} {m.workload.label}]"
        )
        lines = [head]
        lines += [
            "  " + c.describe() for c in self.comparisons if c.verdict is not Verdict.NOT_GATED
        ]
        lines += ["  " + n for n in self.notes]
        lines.append(f"  baseline file: {self.baseline_path}")
        if self.baseline_provenance is not None:
            before = self.baseline_provenance
            lines.append(
                f"  baseline recorded {before.get('date', '?')} at commit "
                f"{(before.get('git_commit') or '?')[:12]}"
            )
            lines.append(
                "  versions: "
                + versions_line(
                    m.backend, before.get("packages", {}), self.provenance.get("packages", {})
                )
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        m = self.measurement
        return {
            "test": self.nodeid,
            "key": self.key,
            "backend": m.backend,
            "model": m.model,
            "workload": m.workload.identity(),
            "workload_label": m.workload.label,
            "warmup": m.warmup,
            "output_fingerprint": m.fingerprint,
            "wall_time": m.wall_time,
            "load_time": self.load_time,
            "samples": m.samples,
            "medians": {name: self.median(name) for name in self.all_samples},
            "raw": [dataclasses.asdict(r) for r in m.raw],
            "verdict": self.verdict.value,
            "comparisons": [
                {
                    "metric": c.metric.name,
                    "verdict": c.verdict.value,
                    "baseline_median": c.baseline.median,
                    "current_median": c.current.median,
                    "change": c.change,
                    "tolerance": c.tolerance,
                    "p_value": c.p_value,
                    "alpha": c.alpha,
                    "n_baseline": c.baseline.n,
                    "n_current": c.current.n,
                    "note": c.note,
                    "noisy": c.noisy,
                }
                for c in self.comparisons
            ],
            "notes": self.notes,
            "message": self.report(),
            "baseline_file": str(self.baseline_path),
            "baseline_provenance": self.baseline_provenance,
            "provenance": self.provenance,
            "saved": self.saved,
        }


def _model_key(model: backends.LoadedModel, workload: Any, name: str | None) -> str:
    """A measurement's key within its test: the given name, or backend, model and workload."""
    return name or f"{model.backend}:{model.identity['name']}:{workload.label}"


def _restarter(model: backends.LoadedModel) -> Callable[[], None] | None:
    return model.restart if isinstance(model, WorkerModel) else None


def measurement_lock() -> Any:
    """A machine-wide lock held while measuring: xdist workers and parallel tox environments
    then take turns, instead of timing each other's load."""
    import tempfile

    from filelock import FileLock

    return FileLock(str(Path(tempfile.gettempdir()) / "pytest-mlxperf-measure.lock"))


class PerfSession:
    """State shared by every perf test of one pytest session."""

    def __init__(
        self, settings: Settings, rootdir: Path, memory_resettable: bool | None = None
    ) -> None:
        self.settings = settings
        # where the process peak cannot be reset (macOS), each measurement gets a fresh worker
        self.memory_resettable = (
            memory.resettable() if memory_resettable is None else memory_resettable
        )
        self.rootdir = rootdir
        self.store = BaselineStore(rootdir / settings.baselines_dir)
        self.models: dict[tuple[str, str], backends.LoadedModel] = {}
        self.results: list[PerfResult] = []  # measured in this process
        self.records: list[dict[str, Any]] = []  # all results of the run, as JSON records
        self.xdist_dir: Path | None = None

    @cached_property
    def fingerprint(self) -> dict[str, Any]:
        return machine.fingerprint(self.settings.machine)

    @cached_property
    def machine_id(self) -> str:
        return machine.machine_id(self.fingerprint)

    @cached_property
    def provenance(self) -> dict[str, Any]:
        return machine.provenance(str(self.rootdir))

    def load(self, backend: str, source: str) -> backends.LoadedModel:
        """Load a model once per session (in its own worker unless ``isolate`` is off); later
        calls reuse it, and a worker that died is replaced."""
        key = (backend, source)
        cached = self.models.get(key)
        if isinstance(cached, WorkerModel) and not cached.alive:
            cached.restart()
        if cached is None:
            cache = Path(self.settings.cache_dir) if self.settings.cache_dir else None
            if self.settings.isolate:
                backends.check_available(backend)
                self.models[key] = WorkerModel(
                    backend, source, cache, self.settings.timeout, self.settings.memory_limit
                )
            else:
                self.models[key] = backends.load(backend, source, cache)
        return self.models[key]

    def close(self) -> None:
        for model in self.models.values():
            model.close()
        self.models.clear()

    def run(
        self,
        nodeid: str,
        model: backends.LoadedModel,
        workload: Workload,
        settings: Settings,
        name: str | None = None,
    ) -> PerfResult:
        """Measure a model on a workload and gate the result (see ``gate``)."""
        return self.gate(
            nodeid,
            _model_key(model, workload, name),
            lambda: self._measure(model, workload, settings),
            model.load_time,
            settings,
            _restarter(model),
        )

    def finetune(
        self,
        nodeid: str,
        model: backends.LoadedModel,
        workload: Any,
        settings: Settings,
        name: str | None = None,
    ) -> PerfResult:
        """Measure LoRA fine-tuning of an MLX model and gate it (see ``gate``)."""
        if not hasattr(model, "finetune") or model.backend != "mlx":
            raise ValueError(f"fine-tuning is measured with MLX only, not {model.backend!r}")
        return self.gate(
            nodeid,
            _model_key(model, workload, name),
            lambda: model.finetune(workload, settings.warmup, settings.repetitions),
            model.load_time,
            settings,
            _restarter(model),
        )

    def time(
        self,
        nodeid: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        settings: Settings,
        name: str | None = None,
    ) -> PerfResult:
        """Time a user's callable end to end and gate the ``duration`` (see ``gate``)."""
        label = name or getattr(fn, "__qualname__", None) or repr(fn)

        def take() -> Measurement:
            return time_callable(
                fn,
                args,
                kwargs,
                label,
                warmup=settings.warmup,
                repetitions=settings.repetitions,
                cooldown=settings.cooldown,
            )

        return self.gate(nodeid, f"call:{label}", take, None, settings)

    def gate(
        self,
        nodeid: str,
        key: str,
        take: Callable[[], Measurement],
        load_time: float | None,
        settings: Settings,
        fresh_process: Callable[[], None] | None = None,
    ) -> PerfResult:
        """Take a measurement (under the machine-wide measurement lock), judge it against the
        baseline (re-taking it to confirm a regression, in a fresh worker process where there
        is one: processes differ more than repetitions, so a confirmation in the same process
        would repeat its luck), save it if asked, and record the result."""
        if any(r.nodeid == nodeid and r.key == key for r in self.results):
            raise ValueError(
                f"{nodeid} measured {key!r} twice; give each measurement its own name= argument"
            )

        def locked_take() -> Measurement:
            with measurement_lock():
                return take()

        result = self.judge(nodeid, key, locked_take(), load_time, settings)
        for attempt in range(1, settings.confirm + 1):
            if result.verdict is not Verdict.REGRESSION or settings.save_baselines:
                break
            first = result
            if fresh_process is not None:
                fresh_process()
            result = self.judge(nodeid, key, locked_take(), load_time, settings)
            if result.verdict is Verdict.REGRESSION:
                result.notes.append(f"confirmed by re-measurement {attempt} of {settings.confirm}")
            else:
                result.notes.append(
                    "a first measurement looked like a regression but a fresh one did not; "
                    "treated as noise: " + "; ".join(c.describe() for c in first.regressions)
                )
        if settings.save_baselines:
            self.store.save(
                nodeid, key, self.machine_id, self.entry(result), settings.baseline_runs
            )
            result.saved = True
        self.results.append(result)
        return result

    def _measure(
        self, model: backends.LoadedModel, workload: Workload, settings: Settings
    ) -> Measurement:
        if isinstance(model, WorkerModel) and model.used and not self.memory_resettable:
            model.restart()
        return measure(
            model,
            workload,
            warmup=settings.warmup,
            repetitions=settings.repetitions,
            cooldown=settings.cooldown,
        )

    def entry(self, result: PerfResult) -> dict[str, Any]:
        m = result.measurement
        return {
            "machine": self.fingerprint,
            "test": result.nodeid,
            "name": result.key,
            "backend": m.backend,
            "model": m.model,
            "workload": m.workload.identity(),
            "runs": [
                {
                    "samples": result.all_samples,
                    "provenance": self.provenance,
                    "output_fingerprint": m.fingerprint,
                }
            ],
        }

    def judge(
        self,
        nodeid: str,
        key: str,
        measurement: Measurement,
        load_time: float | None,
        settings: Settings,
    ) -> PerfResult:
        """Compare a measurement with its stored baseline (identity first, then statistics)."""
        entry, others = self.store.find(nodeid, key, self.machine_id)
        result = PerfResult(
            nodeid=nodeid,
            key=key,
            measurement=measurement,
            load_time=load_time,
            verdict=Verdict.NEW,
            comparisons=[],
            baseline_path=self.store.path_for(nodeid),
            provenance=self.provenance,
        )
        if entry is None:
            if others:
                result.verdict = Verdict.NOT_COMPARABLE
                result.notes.append(
                    "baseline recorded on other machine(s) only; "
                    + "; ".join(_diff(others[0]["machine"], self.fingerprint, "machine."))
                    + " (name equivalent machines with --mlxperf-machine)"
                )
            else:
                result.notes.append("no baseline yet: record one with --mlxperf-save-baselines")
            return result
        result.baseline_provenance = entry["runs"][-1]["provenance"]
        before = entry["runs"][-1].get("output_fingerprint")
        if before and measurement.fingerprint and before != measurement.fingerprint:
            result.notes.append(
                f"output changed: the greedy tokens differ from the baseline's ({before} -> "
                f"{measurement.fingerprint}): a change of behaviour, not only of speed"
            )
        baseline = pooled_samples(entry)
        differences = _diff(entry["model"], measurement.model, "model.") + _diff(
            entry["workload"], measurement.workload.identity(), "workload."
        )
        if differences:
            result.verdict = Verdict.NOT_COMPARABLE
            result.notes.append("identity differs from the baseline: " + "; ".join(differences))
            return result
        current = result.all_samples
        result.comparisons = [
            compare_metric(
                METRICS[name],
                baseline[name],
                samples,
                tolerance=settings.tolerance_for(name),
                alpha=settings.alpha,
            )
            for name, samples in current.items()
            if name in baseline
        ]
        result.verdict = overall([c.verdict for c in result.comparisons])
        return result
