"""Starting and stopping a real inference server on loopback: ``mlx_lm.server`` for MLX models,
llama-cpp-python's OpenAI-compatible server for GGUF files.

A started server is a child process on ``127.0.0.1`` with a free port, its output in a log file
(never a pipe, which a chatty server would fill and block on). It is stopped, and its process
reaped, whatever happens: ``ServerProcess.stop`` at the end of a session, an ``atexit`` hook for
an interpreter that exits another way (Ctrl-C included), and on Linux a parent-death signal, so
that even a killed pytest leaves no orphan server behind.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_mlxperf.host import cpus
from pytest_mlxperf.serving.errors import ServerError

# servers that may still be running: stopped at interpreter exit if nobody else did
_RUNNING: weakref.WeakSet[ServerProcess] = weakref.WeakSet()
_LOG_TAIL = 20


@dataclass(frozen=True)
class ServerKind:
    """How to start one kind of server and how to tell it is ready."""

    name: str  # as shown to people, e.g. "mlx_lm.server"
    module: str  # run as ``python -m module``
    ready_path: str  # GET answers 200 once the model is loaded
    # arguments before the user's (which win where they repeat one), given the server's cores
    default_args: Callable[[frozenset[int] | None], tuple[str, ...]] = lambda cores: ()
    # the ready path's status once the server failed to load its model for good (it stays up)
    failed_status: int | None = None
    # it may generate past max_tokens: llama-cpp-python 0.3 (``Llama._create_completion``)
    # skips its max_tokens check while a multi-byte character is incomplete, for as long as
    # the model keeps producing partial characters (random weights do, for dozens of tokens)
    overshoots: bool = False
    # the backend whose library it runs (``backends.crash_diagnosis``, ``LoadedModel.build``)
    backend: str = ""
    # the same server with weight repacking off, where it has no flag for it (``None``: none)
    no_repack_module: str | None = None
    # what its log says of the build it loaded, as ``LoadedModel.build`` (``{}``: nothing)
    build_from_log: Callable[[str], dict[str, Any]] = lambda log: {}


def _llamacpp_defaults(cores: frozenset[int] | None) -> tuple[str, ...]:
    """llama-cpp-python's server, set up to be measured: a new request must not cut off the
    one streaming (its default), and threads as for an in-process measurement on the same
    cores (``backends.llamacpp.default_threads``), not its own half of the logical cores."""
    from pytest_mlxperf.backends.llamacpp import default_threads

    threads = str(default_threads(cores))
    return ("--interrupt_requests", "False", "--n_threads", threads, "--n_threads_batch", threads)


def _llamacpp_build(log: str) -> dict[str, Any]:
    """llama-cpp-python's server loads verbosely: its log has the build's feature line and
    the buffers the weights went to."""
    from pytest_mlxperf.backends.llamacpp_build import PACKAGE, facts_from_log

    facts = facts_from_log(log)
    return {PACKAGE: facts} if facts is not None else {}


SERVER_KINDS = {
    # mlx_lm.server loads the model in its generation thread; /health is 503 once that died
    "mlx": ServerKind(
        "mlx_lm.server", "mlx_lm.server", "/health", failed_status=503, backend="mlx"
    ),
    "llamacpp": ServerKind(
        "llama_cpp.server",
        "llama_cpp.server",
        "/v1/models",
        _llamacpp_defaults,
        overshoots=True,
        backend="llamacpp",
        no_repack_module="pytest_mlxperf.serving.llamacpp_norepack",
        build_from_log=_llamacpp_build,
    ),
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child_setup(cores: frozenset[int] | None) -> None:
    """In the child before exec (Linux): take its cores (``cpus.pin``), and be sent SIGKILL
    when the parent dies, so a killed pytest cannot leave the server running. Not SIGTERM:
    uvicorn (llama-cpp-python's server) takes it as a graceful shutdown that waits for the
    streams in flight, which nobody reads any more."""
    import ctypes

    cpus.pin(cores)
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class ServerProcess:
    """One started server process: its URL, its log, and a ``stop`` that always reaps it."""

    def __init__(
        self,
        kind: ServerKind,
        model_path: Path,
        extra_args: tuple[str, ...] = (),
        *,
        python: str = sys.executable,
        start_timeout: float = 120.0,
        cores: frozenset[int] | None = None,
        repack: bool | None = None,
    ) -> None:
        """``cores``: the CPU cores the server is confined to (``cpus.choose``; ``None``: any);
        ``repack``: llama.cpp's weight repacking (``None``: its default; ``False`` runs the
        kind's ``no_repack_module``)."""
        if repack is False and kind.no_repack_module is None:
            raise ValueError(f"{kind.name} has no way to turn weight repacking off")
        self.kind = kind
        self.model_path = model_path
        self.extra_args = extra_args
        self.start_timeout = start_timeout
        self.cores = cores
        self.repack = repack
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix=f"mlxperf-{kind.module}-", suffix=".log")[1])
        self.command = [
            python,
            "-m",
            kind.no_repack_module if repack is False and kind.no_repack_module else kind.module,
            "--model",
            str(model_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *kind.default_args(cores),
            *extra_args,
        ]
        started = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal is pytest's, not the server's
                preexec_fn=(lambda: _child_setup(cores))
                if sys.platform.startswith("linux")
                else None,
            )
        _RUNNING.add(self)
        try:
            self._wait_ready(start_timeout)
        except BaseException:
            self.stop()
            raise
        self.start_time = time.perf_counter() - started
        # what the server's library said of its build while loading (provenance)
        self.build = kind.build_from_log(self._log_text())

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = _LOG_TAIL) -> str:
        """The last lines the server printed (its log file), for error messages."""
        text = self._log_text()
        # without the access-log lines of our own readiness polls, which would hide the error
        poll = f"GET {self.kind.ready_path} "
        return "\n".join([ln for ln in text.rstrip().splitlines() if poll not in ln][-lines:])

    def exit_report(self, cpu_flags: frozenset[str] | None = None) -> str:
        """Why the server is gone: its exit code (or signal), the end of its log, and what is
        known of such a crash (``backends.crash_diagnosis``, from the build its log names;
        ``cpu_flags``: the CPU's, ``machine.cpu_flags()`` when not given)."""
        code = self.process.poll()
        report = f"{self.kind.name} ({self.url}, pid {self.pid}) "
        if code is None or code >= 0:
            return report + f"exited with code {code}{self.log_note()}"
        from pytest_mlxperf import backends
        from pytest_mlxperf.host import machine

        diagnosis = backends.crash_diagnosis(
            self.kind.backend,
            -code,
            self.kind.build_from_log(self._log_text()),
            self.repack,
            machine.cpu_flags() if cpu_flags is None else cpu_flags,
        )
        known = f"\n{diagnosis}" if diagnosis else ""
        return report + f"killed by signal {-code}{self.log_note()}{known}"

    def log_note(self) -> str:
        """``; the end of its log (PATH):`` and the last lines, for an error message; empty
        when the server printed nothing."""
        tail = self.log_tail()
        return f"; the end of its log ({self.log_path}):\n{tail}" if tail else ""

    def _wait_ready(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        url = self.url + self.kind.ready_path
        while True:
            if not self.alive:
                raise ServerError(f"server did not start: {self.exit_report()}")
            with contextlib.suppress(httpx.TransportError):
                status = httpx.get(url, timeout=2.0).status_code
                if status == 200:
                    return
                if status == self.kind.failed_status:
                    raise ServerError(
                        f"server did not start: {self.kind.name} ({self.url}, pid {self.pid}) "
                        f"answered HTTP {status} at {self.kind.ready_path}: it failed to load "
                        f"the model; the end of its log:\n{self.log_tail()}"
                    )
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{self.kind.name} was not ready at {url} after {timeout:.0f} s "
                    f"(command: {' '.join(self.command)}); the end of its log:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def restarted(self) -> ServerProcess:
        """Stop this server and start the same command again (a new port): a fresh process."""
        self.stop()
        return ServerProcess(
            self.kind,
            self.model_path,
            self.extra_args,
            python=self.command[0],
            start_timeout=self.start_timeout,
            cores=self.cores,
            repack=self.repack,
        )

    def stop(self, grace: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``grace`` seconds) and reap it; its
        whole process group goes, so helpers it started go too. Safe to call twice."""
        _RUNNING.discard(self)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(OSError):
            self.log_path.unlink()


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop(grace=2.0)
