"""Measuring OpenAI-compatible inference servers over HTTP: servers the fixture starts on
loopback (``mlx_lm.server``, llama-cpp-python's server) and servers a user runs (ollama, LM Studio,
llama.cpp's ``llama-server``), gated with the same verdicts and baselines as in-process
measurements.

- ``launch``: start, watch and always stop a server process;
- ``client``: one streamed request, timed event by event (httpx);
- ``server``: a server to measure, its identity, exact-length prompts;
- ``bench``: the workload, concurrency, and the metrics of a measurement.

Nothing here imports a backend: a started server runs in its own process.
"""

from __future__ import annotations

from types import ModuleType

from pytest_mlxperf.host.packages import INSTALL_HINTS
from pytest_mlxperf.serving.errors import ServerError


def httpx_module() -> ModuleType:
    """httpx, imported on first use, or a ``BackendUnavailable`` naming the extra to install."""
    try:
        import httpx
    except ImportError:
        from pytest_mlxperf.backends import BackendUnavailable

        raise BackendUnavailable(
            f"measuring servers needs httpx, which is not installed: {INSTALL_HINTS['server']}"
        ) from None
    return httpx


__all__ = ["ServerError", "httpx_module"]
