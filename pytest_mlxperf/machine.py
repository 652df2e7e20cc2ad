"""Machine fingerprint (identity: must match to compare) and provenance (recorded, never matched).

Platform facts are read by small functions that take their inputs as arguments, so the macOS and
Linux paths can both be tested on either system.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from typing import Any

from pytest_mlxperf.packages import PACKAGES


def _cpu_model_linux(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Hardware", "Model"):
            return value.strip()
    return platform.processor() or platform.machine()


def _sysctl(name: str) -> str:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def cpu_model(system: str | None = None) -> str:
    """The CPU (on Apple Silicon: the chip, e.g. "Apple M2 Pro")."""
    system = system or platform.system()
    if system == "Darwin":
        return _sysctl("machdep.cpu.brand_string") or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return _cpu_model_linux(f.read())
    except OSError:
        return platform.processor() or platform.machine()


def total_memory() -> int:
    """Physical memory in bytes."""
    import psutil

    return int(psutil.virtual_memory().total)


def fingerprint(override: str | None = None) -> dict[str, Any]:
    """What must match for two results to be comparable. ``override`` (``--mlxperf-machine``)
    names a machine explicitly, for machines known to be equivalent (e.g. a CI runner pool)."""
    if override:
        return {"name": override}
    release = platform.mac_ver()[0] if platform.system() == "Darwin" else platform.release()
    return {
        "system": platform.system(),
        "os_major": release.split(".")[0],
        "arch": platform.machine(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        # rounded to GiB: the kernel reserves a slightly different amount from boot to boot
        "memory_gib": round(total_memory() / 2**30),
    }


def machine_id(fp: dict[str, Any]) -> str:
    """A short stable id of a fingerprint, used to key baseline entries."""
    if set(fp) == {"name"}:
        return str(fp["name"])
    digest = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:10]
    return f"{fp['system'].lower()}-{fp['arch']}-{digest}"


def package_versions() -> dict[str, str]:
    """Versions of the backend packages that are installed (absent ones are left out)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(cwd: str | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=cwd
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(cwd: str | None = None) -> dict[str, Any]:
    """Recorded with every result and shown in messages; never required to match."""
    return {
        "packages": package_versions(),
        "python": platform.python_version(),
        "os": platform.platform(),
        "git_commit": git_commit(cwd),
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
