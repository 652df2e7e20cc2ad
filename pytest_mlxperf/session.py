"""Per-session state: settings, machine identity, loaded models, results and their verdicts.

The pytest plugin keeps one ``PerfSession`` in ``config.stash``; nothing here imports pytest.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

from pytest_mlxperf import backends
from pytest_mlxperf.backends.worker import WorkerModel
from pytest_mlxperf.gates.judge import judge
from pytest_mlxperf.host import cpus, machine, memory
from pytest_mlxperf.measuring.base import CALLABLE, measurement_key
from pytest_mlxperf.measuring.callables import CallableWorkload, time_callable
from pytest_mlxperf.measuring.measure import Measurement, measure
from pytest_mlxperf.measuring.progress import MeasurementProgress, ProgressFn, ProgressSink
from pytest_mlxperf.measuring.workload import Workload
from pytest_mlxperf.serving import server as serving
from pytest_mlxperf.serving.bench import ServeWorkload, measure_server
from pytest_mlxperf.settings.config import Settings
from pytest_mlxperf.stats.canary import run_canary
from pytest_mlxperf.stats.verdicts import Verdict
from pytest_mlxperf.store.baseline import BaselineStore, new_entry
from pytest_mlxperf.store.results import PerfResult


def _model_key(
    model: backends.LoadedModel | serving.Server, workload: Any, name: str | None
) -> str:
    """A measurement's key within its test (``measurement_key``)."""
    return measurement_key(model.backend, model.identity["name"], workload.label, name)


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
        self,
        settings: Settings,
        rootdir: Path,
        memory_resettable: bool | None = None,
        available_cpus: frozenset[int] | None = None,
    ) -> None:
        """``memory_resettable`` and ``available_cpus`` are facts of the platform, found out
        when not given (``memory.resettable``, ``cpus.allowed``); a setting this platform or
        these settings cannot honour raises ``ValueError``."""
        self.settings = settings
        if settings.cpus is not None and not settings.isolate:
            raise ValueError(
                f"--mlxperf-cpus {settings.cpus} confines worker processes, and "
                "--mlxperf-isolate is off: there are none (leave --mlxperf-cpus at 'all')"
            )
        # the cores every worker and started server is confined to (None: no restriction)
        self.cpus = cpus.choose(
            settings.cpus, cpus.allowed() if available_cpus is None else available_cpus
        )
        # where the process peak cannot be reset (macOS), each measurement gets a fresh worker
        self.memory_resettable = (
            memory.resettable() if memory_resettable is None else memory_resettable
        )
        self.rootdir = rootdir
        self.store = BaselineStore(rootdir / settings.baselines_dir)
        self.models: dict[tuple[str, str, bool | None], backends.LoadedModel] = {}
        self.servers: dict[tuple[str, ...], serving.Server] = {}
        self.results: list[PerfResult] = []  # measured in this process
        self.records: list[dict[str, Any]] = []  # all results of the run, as JSON records
        self.xdist_dir: Path | None = None
        self.canary: dict[str, list[float]] | None = None  # timed before the first measurement
        self.progress: ProgressSink | None = None  # where progress is shown (the plugin sets it)

    @cached_property
    def fingerprint(self) -> dict[str, Any]:
        return machine.fingerprint(self.settings.machine)

    @cached_property
    def machine_id(self) -> str:
        return machine.machine_id(self.fingerprint)

    @cached_property
    def provenance(self) -> dict[str, Any]:
        return machine.provenance(str(self.rootdir))

    def load(self, backend: str, source: str, repack: bool | None = None) -> backends.LoadedModel:
        """Load a model once per session (in its own worker unless ``isolate`` is off); later
        calls reuse it, and a worker that died is replaced. ``repack``: llama.cpp's weight
        repacking, by default the session's (``--mlxperf-repack``)."""
        repack = backends.check_repack(backend, repack, self.settings.repack)
        key = (backend, source, repack)
        cached = self.models.get(key)
        if isinstance(cached, WorkerModel) and not cached.alive:
            cached.restart()
        if cached is None:
            if self.progress is not None:
                self.progress.show(
                    f"mlxperf loading {backend} model {source!r}", done=False, essential=False
                )
            cache = Path(self.settings.cache_dir) if self.settings.cache_dir else None
            if self.settings.isolate:
                backends.check_available(backend)
                self.models[key] = WorkerModel(
                    backend,
                    source,
                    cache,
                    self.settings.timeout,
                    self.settings.memory_limit,
                    self.cpus,
                    repack,
                )
            else:
                self.models[key] = backends.load(backend, source, cache, repack)
        return self.models[key]

    def serve(
        self,
        backend: str,
        source: str,
        args: tuple[str, ...] = (),
        repack: bool | None = None,
    ) -> serving.Server:
        """Start ``backend``'s server on ``source`` once per session (``serving.server.serve``);
        later calls reuse it, and a server that died is started again. ``repack``: llama.cpp's
        weight repacking, by default the session's (``--mlxperf-repack``)."""
        repack = backends.check_repack(backend, repack, self.settings.repack)
        key = (backend, source, repr(repack), *args)
        server = self.servers.get(key)
        if server is not None and not server.alive:
            server.restart()
        if server is None:
            if self.progress is not None:
                self.progress.show(
                    f"mlxperf starting {backend} server on {source!r}", done=False, essential=False
                )
            cache = Path(self.settings.cache_dir) if self.settings.cache_dir else None
            server = self.servers[key] = serving.serve(
                backend,
                source,
                args,
                cache_dir=cache,
                timeout=self.settings.timeout,
                cpus=self.cpus,
                repack=repack,
            )
        return server

    def connect(self, url: str, model: str | None = None) -> serving.Server:
        """A server someone else runs (``serving.server.connect``), once per session."""
        key = ("connect", url, model or "")
        if key not in self.servers:
            self.servers[key] = serving.connect(url, model, timeout=self.settings.timeout)
        return self.servers[key]

    def close(self) -> None:
        """Release every model and stop every started server."""
        for model in self.models.values():
            model.close()
        self.models.clear()
        for server in self.servers.values():
            server.close()
        self.servers.clear()

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
            lambda progress: self._measure(model, workload, settings, progress),
            model.load_time,
            settings,
            _restarter(model),
        )

    def run_server(
        self,
        nodeid: str,
        server: serving.Server,
        workload: ServeWorkload,
        settings: Settings,
        name: str | None = None,
    ) -> PerfResult:
        """Measure a server on a workload of streamed requests and gate it (see ``gate``)."""
        return self.gate(
            nodeid,
            _model_key(server, workload, name),
            lambda progress: measure_server(
                server,
                workload,
                warmup=settings.warmup,
                repetitions=settings.repetitions,
                cooldown=settings.cooldown,
                progress=progress,
            ),
            server.load_time,
            settings,
            server.restart if server.process is not None else None,
        )

    def finetune(
        self,
        nodeid: str,
        model: backends.LoadedModel,
        workload: Any,
        settings: Settings,
        name: str | None = None,
    ) -> PerfResult:
        """Measure LoRA fine-tuning of an MLX model and gate it (see ``gate``); a backend
        without the capability refuses (``LoadedModel.finetune``)."""
        return self.gate(
            nodeid,
            _model_key(model, workload, name),
            lambda progress: model.finetune(
                workload, settings.warmup, settings.repetitions, progress=progress
            ),
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

        def take(progress: ProgressFn | None) -> Measurement:
            return time_callable(
                fn,
                args,
                kwargs,
                label,
                warmup=settings.warmup,
                repetitions=settings.repetitions,
                cooldown=settings.cooldown,
            )

        key = measurement_key(CALLABLE, label, CallableWorkload(label).label)
        return self.gate(nodeid, key, take, None, settings, self.restart_processes)

    def restart_processes(self) -> None:
        """Fresh processes for every server and worker model this session started: a timed
        callable may use any of them (a re-take in the same processes would repeat their
        luck). Servers someone else runs are left alone."""
        for server in self.servers.values():
            if server.process is not None:
                server.restart()
        for model in self.models.values():
            if isinstance(model, WorkerModel):
                model.restart()

    def gate(
        self,
        nodeid: str,
        key: str,
        take: Callable[[ProgressFn | None], Measurement],
        load_time: float | None,
        settings: Settings,
        fresh_process: Callable[[], None] | None = None,
    ) -> PerfResult:
        """Take a measurement (under the machine-wide measurement lock), judge it against the
        baseline (re-taking it to confirm a regression, in a fresh worker process where there
        is one: processes differ more than repetitions, so a confirmation in the same process
        would repeat its luck), save it if asked, and record the result. ``take`` is given
        where its progress goes (``None`` where it is not shown)."""
        if any(r.nodeid == nodeid and r.key == key for r in self.results):
            raise ValueError(
                f"{nodeid} measured {key!r} twice; give each measurement its own name= argument"
            )

        watch = MeasurementProgress(self.progress, nodeid, key) if self.progress else None

        def locked_take(stage: str = "") -> Measurement:
            with measurement_lock():
                if self.canary is None:
                    self.canary = run_canary()
                if watch is not None:
                    watch.begin(stage)
                return take(watch)

        result = self.judge(nodeid, key, locked_take(), load_time, settings)
        for attempt in range(1, settings.confirm + 1):
            if result.verdict is not Verdict.REGRESSION or settings.save_baselines:
                break
            first = result
            if fresh_process is not None:
                fresh_process()
            stage = f"confirmation {attempt}/{settings.confirm}"
            result = self.judge(nodeid, key, locked_take(stage), load_time, settings)
            if result.verdict is Verdict.REGRESSION:
                result.notes.append(f"confirmed by re-measurement {attempt} of {settings.confirm}")
            else:
                result.notes.append(
                    "a first measurement looked like a regression but a fresh one did not; "
                    "treated as noise: " + "; ".join(c.describe() for c in first.regressions)
                )
        if settings.save_baselines:
            self.save(result, settings.baseline_runs)
        if watch is not None:
            watch.finish(f"done, {result.verdict.value}")
        self.results.append(result)
        return result

    def _measure(
        self,
        model: backends.LoadedModel,
        workload: Workload,
        settings: Settings,
        progress: ProgressFn | None,
    ) -> Measurement:
        if isinstance(model, WorkerModel) and model.used and not self.memory_resettable:
            model.restart()
        return measure(
            model,
            workload,
            warmup=settings.warmup,
            repetitions=settings.repetitions,
            cooldown=settings.cooldown,
            progress=progress,
        )

    def judge(
        self,
        nodeid: str,
        key: str,
        measurement: Measurement,
        load_time: float | None,
        settings: Settings,
    ) -> PerfResult:
        """Judge a measurement against its stored baseline (see ``judge.judge``)."""
        entry, others = self.store.find(nodeid, key, self.machine_id)
        result = PerfResult(
            nodeid=nodeid,
            key=key,
            measurement=measurement,
            load_time=load_time,
            verdict=Verdict.NEW,
            comparisons=[],
            baseline_path=self.store.path_for(nodeid),
            # the builds the measurement ran on are provenance, like the versions
            provenance={**self.provenance, "builds": measurement.build}
            if measurement.build
            else self.provenance,
            canary=self.canary,
            notes=list(measurement.notes),
        )
        return judge(result, entry, others, self.fingerprint, settings)

    def save(self, result: PerfResult, keep_runs: int) -> None:
        """Add the result to its baseline entry as one more run."""
        m = result.measurement
        entry = new_entry(
            machine=self.fingerprint,
            test=result.nodeid,
            name=result.key,
            backend=m.backend,
            model=m.model,
            workload=m.workload.identity(),
            samples=result.all_samples,
            provenance=result.provenance,
            output_fingerprint=m.fingerprint,
            canary=result.canary,
        )
        self.store.save(result.nodeid, result.key, self.machine_id, entry, keep_runs)
        result.saved = True
