"""The packages behind each backend: which ones are recorded, which ones a backend's results
depend on, how each is installed, and how their versions are shown.

One home for these lists, so that provenance (``machine.package_versions``), failure messages,
the cross-file comparison and install hints always agree. Nothing here imports a backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# every package whose version is recorded with a result (provenance), in display order
PACKAGES = ("mlx", "mlx-metal", "mlx-cpu", "mlx-cuda", "mlx-lm", "llama-cpp-python")
# the packages whose versions a comparison of each backend's results shows
BACKEND_PACKAGES: dict[str, tuple[str, ...]] = {
    "mlx": ("mlx", "mlx-metal", "mlx-cpu", "mlx-cuda", "mlx-lm"),
    "llamacpp": ("llama-cpp-python",),
    "mlx-server": ("mlx", "mlx-metal", "mlx-cpu", "mlx-cuda", "mlx-lm"),
    "llamacpp-server": ("llama-cpp-python",),
}
# the install command of each extra of pytest-mlxperf
INSTALL_HINTS = {
    "mlx": 'pip install "pytest-mlxperf[mlx]"',
    "llamacpp": 'pip install "pytest-mlxperf[llamacpp]"',
    "synth": 'pip install "pytest-mlxperf[synth]"',
    "server": 'pip install "pytest-mlxperf[server]"',
}
# Build variants of mlx (Linux CPU, macOS Metal, CUDA) share mlx's version; shown only if not.
_MLX_VARIANTS = ("mlx-cpu", "mlx-metal", "mlx-cuda")


def versions(provenance: Mapping[str, Any]) -> dict[str, str]:
    """A record's package versions, each with the build it ran where one was recorded
    (``provenance["builds"]``: ``{"llama-cpp-python": "0.3.36 (AVX512, AMX)"}``). A build is
    provenance like a version: wherever versions are shown, compared or pooled, a change of
    build counts as a change of version, so the A/B gate can compare two builds on purpose."""
    shown = dict(provenance.get("packages") or {})
    for name, facts in (provenance.get("builds") or {}).items():
        if name in shown and isinstance(facts, Mapping) and facts.get("label"):
            shown[name] = f"{shown[name]} ({facts['label']})"
    return shown


def backend_packages(backend: str | None, *packages: Mapping[str, str]) -> tuple[str, ...]:
    """The packages whose versions matter to ``backend``'s results: its own (mlx, mlx-lm, ...),
    or every recorded one for anything else (a timed callable, or no backend given)."""
    if backend in BACKEND_PACKAGES:
        return BACKEND_PACKAGES[backend]
    return tuple(dict.fromkeys(name for p in packages for name in p))


def below(versions: Mapping[str, str], package: str, minimum: str) -> str | None:
    """``package``'s version in ``versions`` when it is older than ``minimum``; ``None`` when
    it is new enough or not there."""
    from packaging.version import Version

    found = versions.get(package)
    return found if found is not None and Version(found) < Version(minimum) else None


def sorted_packages(packages: Mapping[str, str]) -> dict[str, str]:
    """``packages`` in ``PACKAGES`` order, unknown names last (alphabetically)."""
    order = {name: i for i, name in enumerate(PACKAGES)}
    return dict(sorted(packages.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def versions_label(packages: Mapping[str, str], backend: str | None = None) -> str:
    """``mlx 0.30.0 / mlx-lm 0.28.1``: the versions of ``backend``'s packages (all recorded
    ones when ``None``), leaving out mlx build variants that only repeat mlx's version."""
    names = backend_packages(backend, packages)
    shown = [
        f"{name} {packages[name]}"
        for name in names
        if name in packages
        and not (name in _MLX_VARIANTS and packages[name] == packages.get("mlx"))
    ]
    return " / ".join(shown) or "versions unknown"


def versions_line(backend: str, before: Mapping[str, str], after: Mapping[str, str]) -> str:
    """``mlx 0.20.0 -> 0.21.1, mlx-lm 0.20.1 -> 0.20.1``: the backend's packages on both sides."""
    parts = [
        f"{name} {before.get(name, '?')} -> {after.get(name, '?')}"
        for name in backend_packages(backend, before, after)
        if name in before or name in after
    ]
    return ", ".join(parts) or "unknown"


def packages_changed(backend: str, before: Mapping[str, str], after: Mapping[str, str]) -> bool:
    """Whether any of the backend's packages differs between the two sides."""
    return any(before.get(p) != after.get(p) for p in backend_packages(backend, before, after))
