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
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from typing import Any

from pytest_mlxperf.host.packages import PACKAGES

# What a fingerprint says about the CPU beyond its name, per system. The name alone does not
# tell machines apart: a VM may show only "AMD EPYC" for CPUs of different generations that
# run the same suite 2-3x apart and compute different greedy tokens. Fingerprints written
# before these fields existed lack them (``missing_cpu_detail``).
CPU_DETAIL = {
    "Linux": ("cpu_family", "cpu_model_id", "cpu_stepping", "isa"),
    "Darwin": ("hw_model",),
}
# Flags (x86 ``flags``, Arm ``Features``) that name instruction-set extensions compute kernels
# dispatch on. Flags the kernel or hypervisor synthesizes (mitigations such as ``ssbd`` or
# ``ibpb``, ``hypervisor``, ``cpuid``) are left out: a kernel or microcode update changes them
# on the same CPU, and would orphan every baseline.
ISA_FLAG_PREFIXES = (
    "3dnow",
    "abm",
    "adx",
    "aes",
    "amx",
    "asimd",
    "avx",
    "bf16",
    "bmi",
    "f16c",
    "fma",
    "fp",
    "gfni",
    "i8mm",
    "mmx",
    "movbe",
    "pclmul",
    "pmull",
    "pni",  # SSE3, as Linux names it
    "popcnt",
    "sha",
    "sse",
    "ssse3",
    "sve",
    "vaes",
    "vpclmul",
    "xop",
)


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


def isa_digest(flags: Iterable[str]) -> str | None:
    """12 hex digits of a hash of the CPU's instruction-set flags (``ISA_FLAG_PREFIXES``),
    sorted: CPUs that differ in e.g. AVX-512 or ``avx512_vp2intersect`` get different
    digests. ``None`` when there are none."""
    isa = sorted({f for f in flags if f.startswith(ISA_FLAG_PREFIXES)})
    return hashlib.sha256(" ".join(isa).encode()).hexdigest()[:12] if isa else None


def linux_cpu_detail(cpuinfo: str) -> dict[str, Any]:
    """Family, model number, stepping and ISA digest of the first processor in the text of
    ``/proc/cpuinfo`` (x86 names; Arm's implementer, part, revision and features stand in)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())

    def first(*keys: str) -> str | None:
        return next((fields[k] for k in keys if k in fields), None)

    return {
        "cpu_family": first("cpu family", "CPU implementer"),
        "cpu_model_id": first("model", "CPU part"),
        "cpu_stepping": first("stepping", "CPU revision"),
        "isa": isa_digest((first("flags", "Features") or "").split()),
    }


def cpu_fields(
    system: str, cpuinfo: str = "", sysctl: Callable[[str], str] = _sysctl
) -> dict[str, Any]:
    """The CPU's part of the fingerprint on ``system``: ``cpu`` (the model name; on Apple
    Silicon the chip, e.g. "Apple M2 Pro") and the detail of ``CPU_DETAIL``. The platform's
    facts are arguments: ``cpuinfo`` the text of ``/proc/cpuinfo``, ``sysctl`` a reader of
    macOS's ``sysctl -n NAME``."""
    if system == "Darwin":
        return {
            "cpu": sysctl("machdep.cpu.brand_string") or platform.machine(),
            "hw_model": sysctl("hw.model") or None,
        }
    cpu = {"cpu": _cpu_model_linux(cpuinfo)}
    return {**cpu, **linux_cpu_detail(cpuinfo)} if system == "Linux" else cpu


def read_cpuinfo() -> str:
    """The text of ``/proc/cpuinfo``; empty where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The first processor's flags (x86 ``flags``, Arm ``Features``) in the text of
    ``/proc/cpuinfo`` (this machine's when not given); empty where there is none."""
    text = read_cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def total_memory() -> int:
    """Physical memory in bytes."""
    import psutil

    return int(psutil.virtual_memory().total)


def fingerprint(
    override: str | None = None, *, system: str | None = None, cpuinfo: str | None = None
) -> dict[str, Any]:
    """What must match for two results to be comparable. ``override`` (``--mlxperf-machine``)
    names a machine explicitly, for machines known to be equivalent (e.g. a CI runner pool).
    ``system`` and ``cpuinfo`` default to this machine's (given in tests)."""
    if override:
        return {"name": override}
    system = system or platform.system()
    if cpuinfo is None:
        cpuinfo = read_cpuinfo() if system == "Linux" else ""
    release = platform.mac_ver()[0] if system == "Darwin" else platform.release()
    return {
        "system": system,
        "os_major": release.split(".")[0],
        "arch": platform.machine(),
        **cpu_fields(system, cpuinfo),
        "cores": os.cpu_count(),
        # rounded to GiB: the kernel reserves a slightly different amount from boot to boot
        "memory_gib": round(total_memory() / 2**30),
    }


def missing_cpu_detail(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The CPU detail fields ``current`` has and ``recorded`` lacks: ``recorded`` was written
    with an older fingerprint that did not tell CPU models apart. Empty for named machines."""
    if "name" in recorded or "name" in current:
        return []
    return [
        key
        for key in CPU_DETAIL.get(str(current.get("system")), ())
        if key in current and key not in recorded
    ]


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
