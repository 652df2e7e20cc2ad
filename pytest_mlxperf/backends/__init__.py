"""Backends, imported lazily by name so that importing the plugin imports no ML framework."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from pytest_mlxperf.backends.base import BackendError, LoadedModel, RawSample
from pytest_mlxperf.packages import INSTALL_HINTS
from pytest_mlxperf.sources import resolve

__all__ = ["BACKENDS", "BackendError", "BackendUnavailable", "LoadedModel", "RawSample", "load"]

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


def load(backend: str, source: str, cache_dir: Path | None = None) -> LoadedModel:
    """Resolve ``source`` and load it with ``backend`` (load time measured by the backend)."""
    check_available(backend)
    resolved = resolve(backend, source, cache_dir)
    module = importlib.import_module(BACKENDS[backend][0])
    return module.load(resolved)
