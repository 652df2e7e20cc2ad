"""Backends, imported lazily by name so that importing the plugin imports no ML framework."""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pytest_mlxperf.backends import llamacpp_build
from pytest_mlxperf.backends.sources import resolve
from pytest_mlxperf.host.packages import INSTALL_HINTS
from pytest_mlxperf.measuring.base import BackendError, LoadedModel, RawSample
from pytest_mlxperf.settings.config import from_environment

__all__ = [
    "BACKENDS",
    "BackendError",
    "BackendUnavailable",
    "LoadedModel",
    "RawSample",
    "check_repack",
    "crash_diagnosis",
    "load",
]

# backend name → (module, the import that proves it is installed, install command)
BACKENDS: dict[str, tuple[str, str, str]] = {
    "mlx": ("pytest_mlxperf.backends.mlx", "mlx_lm", INSTALL_HINTS["mlx"]),
    "llamacpp": ("pytest_mlxperf.backends.llamacpp", "llama_cpp", INSTALL_HINTS["llamacpp"]),
}


class BackendUnavailable(BackendError):
    """The backend's package is not installed; the message carries the install command."""


def check_available(backend: str) -> None:
    """Raise ``ValueError`` for an unknown backend, ``BackendUnavailable`` for a missing one.

    Looks the package up without importing it: the parent of isolated workers never loads a
    backend (native libraries cannot be unloaded, nor safely imported twice)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known backends: {', '.join(BACKENDS)}")
    _, probe, hint = BACKENDS[backend]
    if importlib.util.find_spec(probe) is None:
        raise BackendUnavailable(
            f"backend {backend!r} is not installed (no module {probe!r}); install it with: {hint}"
        )


def check_repack(backend: str, repack: bool | None, default: bool | None = None) -> bool | None:
    """``repack`` for ``backend``: as given, else ``default`` (a session's setting), else (for
    llama.cpp) the environment's ``MLXPERF_REPACK``, so that a model loaded or a server
    started outside a session follows the setting as a session's does; ``None``: llama.cpp's
    default. Weight repacking is a llama.cpp load setting: ``ValueError`` for any other backend
    given one (a default does not apply to it)."""
    if backend != "llamacpp":
        if repack is not None:
            raise ValueError(f"repack is a llama.cpp load setting; backend {backend!r} has none")
        return None
    for chosen in (repack, default):
        if chosen is not None:
            return chosen
    return from_environment("repack", os.environ)


def crash_diagnosis(
    backend: str,
    signal: int,
    build: Mapping[str, Any],
    repack: bool | None,
    cpu_flags: Iterable[str],
) -> str | None:
    """What is known of ``backend``'s process dying by ``signal`` (a number), given the
    ``build`` it reported (``LoadedModel.build``; ``{}`` if it died before), its repack setting
    and the CPU's flags; ``None`` where nothing is. Only llama.cpp has a known crash."""
    if backend != "llamacpp":
        return None
    facts = build.get(llamacpp_build.PACKAGE)
    return llamacpp_build.crash_diagnosis(signal, facts, repack, cpu_flags)


def load(
    backend: str, source: str, cache_dir: Path | None = None, repack: bool | None = None
) -> LoadedModel:
    """Resolve ``source`` and load it with ``backend`` (load time measured by the backend).
    ``repack``: llama.cpp's weight repacking (``check_repack``); refused for MLX."""
    check_available(backend)
    repack = check_repack(backend, repack)
    resolved = resolve(backend, source, cache_dir)
    module = importlib.import_module(BACKENDS[backend][0])
    return module.load(resolved, repack) if backend == "llamacpp" else module.load(resolved)
