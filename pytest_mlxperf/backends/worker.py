"""Isolated measurement: each model lives in its own worker process.

Why this is the default: a segfault or abort in native backend code then fails one test instead
of killing the pytest session; a hung backend can be stopped; and the process high-water mark
(the only memory figure llama.cpp has, and what macOS needs to count Metal buffers) belongs to
one model alone, not to whatever else the test process loaded before. The cost is one process
start and backend import per model and session.

The parent talks to the worker over a ``multiprocessing`` pipe; every timed region runs inside
the worker. A call that runs long sends progress over the same pipe ahead of its answer:
fine-tuning (which runs all its repetitions in the worker) its ``Progress`` events, a repetition
its ``Tick`` events, throttled in the worker (``progress.Ticker``) and sent only when the pipe
has room at once, so a parent slow to read never holds up a timed loop.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import select
import signal
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pytest_mlxperf import backends
from pytest_mlxperf.host import cpus, machine
from pytest_mlxperf.measuring.base import BackendError, LoadedModel, Measurement, RawSample
from pytest_mlxperf.measuring.measure import MeasurementError
from pytest_mlxperf.measuring.progress import ProgressFn, Ticker
from pytest_mlxperf.measuring.workload import FinetuneWorkload, Workload

_POLL = 0.02
# Errors whose message says all a user needs (a model that does not exist, a bad workload):
# passed on with the message alone, as they read without isolation. Anything else is a crash
# of the backend or of this plugin and keeps the worker's traceback.
USER_ERRORS = (BackendError, MeasurementError, ValueError)


class WorkerError(BackendError):
    """The worker process crashed, hung, or ran out of its memory limit. ``diagnosis``: what
    is known of such a crash (``backends.crash_diagnosis``), also at the end of the message."""

    def __init__(self, message: str, diagnosis: str | None = None) -> None:
        super().__init__(message + (f": {diagnosis}" if diagnosis else ""))
        self.diagnosis = diagnosis


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


def _send_if_room(conn: Connection, message: Any) -> None:
    """Send ``message`` if the pipe has room for it now, else drop it (the next tick says more).
    The pipe (a socket pair) selects as writable only while most of its buffer is free, far more
    than one small message needs, so the send never waits for the parent to read."""
    if select.select([], [conn], [], 0)[1]:
        conn.send(message)


def _listeners(conn: Connection, listen: Any) -> dict[str, Any]:
    """The keyword arguments that send a call's events to the parent, ahead of its answer:
    ``"progress"``, events between repetitions (outside any timed region), each sent as it
    comes; ``("ticks", every)``, a ``Ticker`` whose ticks are sent if the pipe has room."""
    if listen == "progress":
        return {"progress": lambda event: conn.send(("progress", event))}
    if listen is not None:
        _, every = listen
        return {"ticks": Ticker(lambda tick: _send_if_room(conn, ("progress", tick)), every)}
    return {}


def _serve(
    conn: Connection,
    backend: str,
    source: str,
    cache_dir: str | None,
    cores: frozenset[int] | None,
    repack: bool | None,
) -> None:
    """The worker's main loop: take its cores (before the backend starts any thread), load the
    model, then answer calls until told to stop."""
    cpus.pin(cores)

    def reply(call: Any, *args: Any, **kwargs: Any) -> None:
        try:
            conn.send(("ok", call(*args, **kwargs)))
        except BaseException as exc:  # every failure goes back to the parent, with its type
            trace = None if isinstance(exc, USER_ERRORS) else traceback.format_exc()
            conn.send(("error", type(exc).__name__, str(exc), trace))

    model: LoadedModel | None = None

    def load() -> dict[str, Any]:
        nonlocal model
        model = backends.load(backend, source, Path(cache_dir) if cache_dir else None, repack)
        info = {
            k: getattr(model, k) for k in ("identity", "load_time", "vocab_size", "context_length")
        }
        info["build"] = dict(model.build)
        info["identity"] = {**info["identity"], **cpus.identity(cores)}
        # whether the backend has the optional fine-tuning capability, for the parent to refuse
        info["finetunes"] = type(model).finetune is not LoadedModel.finetune
        return info

    reply(load)
    while model is not None:
        try:
            method, args, listen = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if method == "close":
            model.close()
            return
        reply(getattr(model, method), *args, **_listeners(conn, listen))


class WorkerModel(LoadedModel):
    """A ``LoadedModel`` whose backend runs in a separate process."""

    def __init__(
        self,
        backend: str,
        source: str,
        cache_dir: Path | None,
        timeout: float,
        memory_limit: int | None = None,
        cores: frozenset[int] | None = None,
        repack: bool | None = None,
        cpu_flags: frozenset[str] | None = None,
    ) -> None:
        """``cores``: the CPU cores the worker is confined to (``cpus.choose``; ``None``: any),
        recorded in the model's identity as a count; ``repack``: llama.cpp's weight repacking
        (``None``: its default). ``cpu_flags``: this CPU's flags, for diagnosing a crash
        before the backend said what it runs (``machine.cpu_flags()`` when not given)."""
        repack = backends.check_repack(backend, repack)
        self.backend = backend
        self.timeout = timeout
        self.memory_limit = memory_limit
        self.repack = repack
        self._cpu_flags = cpu_flags
        self._describe = f"worker for {backend} model {source!r}"
        self._args = (backend, source, str(cache_dir) if cache_dir else None, cores, repack)
        self.used = False
        self.build: dict[str, Any] = {}  # known once the model is loaded
        info = self._start()
        self.identity = info["identity"]
        self.load_time = info["load_time"]
        self.vocab_size = info["vocab_size"]
        self.context_length = info["context_length"]
        self._finetunes = info["finetunes"]
        self.build = info["build"]

    def _start(self) -> dict[str, Any]:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve, args=(child, *self._args), name=f"mlxperf-{self.backend}", daemon=True
        )
        self._proc.start()
        child.close()
        return self._call_result("load")

    def restart(self) -> None:
        """Replace the worker process by a fresh one with the same model (after a crash, or to
        start a measurement with a clean process peak where the OS cannot reset it)."""
        self.close()
        info = self._start()
        if info["identity"] != self.identity:
            raise WorkerError(f"{self._describe}: the model changed on disk during the session")
        self.used = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc.is_alive()

    def _kill(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join(5)

    def _over_memory_limit(self) -> int | None:
        """The worker's resident memory if it is over the limit, else ``None``."""
        if self.memory_limit is None:
            return None
        import psutil

        try:
            rss = psutil.Process(self._proc.pid).memory_info().rss
        except psutil.Error:
            return None
        return rss if rss > self.memory_limit else None

    def _call_result(self, what: str, progress: Callable[[Any], None] | None = None) -> Any:
        deadline = time.monotonic() + self.timeout
        while True:
            status, *payload = self._receive(what, deadline)
            if status != "progress":
                break
            if progress is not None:
                progress(payload[0])
        if status == "error":
            kind, message, trace = payload
            if trace is None:  # a user error (USER_ERRORS)
                # what is missing stays missing: the fixture skips for it, as in-process
                missing = kind == backends.BackendUnavailable.__name__
                raise (backends.BackendUnavailable if missing else WorkerError)(message)
            raise WorkerError(f"{self._describe}: {kind} during {what}: {message}\n{trace}")
        return payload[0]

    def _receive(self, what: str, deadline: float) -> Any:
        """The worker's next message: a progress event or the call's answer."""
        # a pipe answers at once when data or EOF arrives: the poll interval only paces the
        # timeout and memory checks
        interval = _POLL if self.memory_limit is not None else 1.0
        while not self._conn.poll(interval):
            rss = self._over_memory_limit()
            if rss is not None:
                self._kill()
                raise WorkerError(
                    f"{self._describe} exceeded the memory limit of {self.memory_limit / 1e9:.3f} "
                    f"GB (--mlxperf-memory-limit) during {what}: resident {rss / 1e9:.3f} GB; "
                    "it was stopped"
                )
            if not self._proc.is_alive():
                raise self._died(f"during {what}")
            if time.monotonic() > deadline:
                self._kill()
                raise WorkerError(
                    f"{self._describe} did not finish {what} within {self.timeout:g} s "
                    "(--mlxperf-timeout); it was stopped"
                )
        try:
            return self._conn.recv()
        except (EOFError, ConnectionResetError):  # the worker died with the pipe open
            raise self._died(f"during {what}") from None

    def _died(self, when: str) -> WorkerError:
        """The error for a worker that is gone: how it ended, and what is known of such a
        crash of its backend (``backends.crash_diagnosis``)."""
        self._proc.join(1)
        code = self._proc.exitcode
        diagnosis = None
        if code is not None and code < 0:
            flags = machine.cpu_flags() if self._cpu_flags is None else self._cpu_flags
            diagnosis = backends.crash_diagnosis(
                self.backend, -code, self.build, self.repack, flags
            )
        return WorkerError(f"{self._describe} {_exit_reason(code)} {when}", diagnosis)

    def _call(
        self,
        method: str,
        *args: Any,
        progress: ProgressFn | None = None,
        ticks: Ticker | None = None,
    ) -> Any:
        """Call ``method`` of the worker's model; with ``progress``, the method is given a
        ``progress`` argument whose events come back over the pipe as they happen; with
        ``ticks``, a ``ticks`` argument (a ``Ticker`` as often as this one) whose ticks come
        back to ``ticks.report``."""
        if not self._proc.is_alive():
            raise self._died("earlier")
        listen: Any = "progress" if progress is not None else None
        if ticks is not None:
            listen = ("ticks", ticks.every)
        try:
            self._conn.send((method, args, listen))
        except (BrokenPipeError, ConnectionResetError):  # it died since is_alive said not
            raise self._died(f"before {method}") from None
        return self._call_result(method, ticks.report if ticks is not None else progress)

    def tokenize(self, text: str) -> list[int]:
        return self._call("tokenize", text)

    def memory_usage(self) -> tuple[int, int | None]:
        """The worker's memory, where the model runs (not this process's)."""
        resident, swap = self._call("memory_usage")
        return resident, swap

    def run(
        self,
        prompt: list[int],
        context: list[int],
        workload: Workload,
        ticks: Ticker | None = None,
    ) -> RawSample:
        self.used = True
        return self._call("run", prompt, context, workload, ticks=ticks)

    def finetune(
        self,
        workload: FinetuneWorkload,
        warmup: int,
        repetitions: int,
        progress: ProgressFn | None = None,
    ) -> Measurement:
        """The worker's model measures the fine-tuning, its progress sent back as it goes; a
        backend without the capability is refused here, as ``LoadedModel`` refuses it, without
        a call to the worker."""
        if not self._finetunes:
            return super().finetune(workload, warmup, repetitions)
        self.used = True
        return self._call("finetune", workload, warmup, repetitions, progress=progress)

    def close(self) -> None:
        if self._proc.is_alive():
            with contextlib.suppress(BrokenPipeError, OSError):
                self._conn.send(("close", (), None))
            self._proc.join(10)
        self._kill()
