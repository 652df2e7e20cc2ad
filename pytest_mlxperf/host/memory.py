"""Process-level memory of the current process (or of another of the same user, such as a server
the fixture started: ``pid``): its peak (and whether that can be reset), and what it uses now
(resident and swapped out).

Linux: ``VmHWM`` from ``/proc/self/status``, reset by writing ``5`` to ``/proc/self/clear_refs``;
now: ``VmRSS`` and ``VmSwap``. macOS: the lifetime maximum *physical footprint*
(``proc_pid_rusage``, ``rusage_info_v4``), which counts Metal buffers that RSS does not; now: the
current physical footprint (macOS reports no swap per process). The peak cannot be reset there,
so on macOS the session gives each measurement a fresh worker process (``resettable() is False``).

The platform is an argument everywhere, so both paths are tested on either system.
"""

from __future__ import annotations

import re
import struct
import sys
from pathlib import Path

_HWM = re.compile(r"^VmHWM:\s+(\d+)\s+kB", re.MULTILINE)
_RSS = re.compile(r"^VmRSS:\s+(\d+)\s+kB", re.MULTILINE)
_SWAP = re.compile(r"^VmSwap:\s+(\d+)\s+kB", re.MULTILINE)
# rusage_info_v4 (<sys/resource.h>): a 16-byte uuid, then 35 uint64 fields: 18 of v2, 9 added
# by v3, then ri_logical_writes and ri_lifetime_max_phys_footprint (index 28) of v4
RUSAGE_INFO_V4 = 4
_V4_FIELDS = 35
_LIFETIME_MAX_FOOTPRINT = 28
_PHYS_FOOTPRINT = 7


def parse_vmhwm(status: str) -> int:
    """Bytes of the ``VmHWM`` line of a ``/proc/<pid>/status`` text."""
    match = _HWM.search(status)
    if match is None:
        raise ValueError("no VmHWM line in /proc status")
    return int(match.group(1)) * 1024


def parse_vm_usage(status: str) -> tuple[int, int | None]:
    """(resident, swapped out) bytes of a ``/proc/<pid>/status`` text (``VmRSS``, ``VmSwap``;
    swap ``None`` where the kernel does not report it)."""
    rss, swap = _RSS.search(status), _SWAP.search(status)
    if rss is None:
        raise ValueError("no VmRSS line in /proc status")
    return int(rss.group(1)) * 1024, None if swap is None else int(swap.group(1)) * 1024


def parse_rusage_v4(buffer: bytes, field: int = _LIFETIME_MAX_FOOTPRINT) -> int:
    """A field (bytes) of a raw ``rusage_info_v4`` struct: ``ri_lifetime_max_phys_footprint``
    unless another index is given (``_PHYS_FOOTPRINT``: the current one)."""
    fields = struct.unpack_from(f"=16s{_V4_FIELDS}Q", buffer)
    return int(fields[1 + field])


def _proc(pid: int | None, name: str) -> Path:
    return Path(f"/proc/{'self' if pid is None else pid}/{name}")


def _macos_rusage_v4(pid: int | None) -> bytes:
    import ctypes
    import os

    libc = ctypes.CDLL("/usr/lib/libSystem.B.dylib", use_errno=True)
    buffer = ctypes.create_string_buffer(16 + 8 * _V4_FIELDS)
    if libc.proc_pid_rusage(pid or os.getpid(), RUSAGE_INFO_V4, buffer) != 0:
        raise OSError(ctypes.get_errno(), "proc_pid_rusage failed")
    return buffer.raw


def resettable(system: str = sys.platform) -> bool:
    """Whether the process peak can be reset between repetitions on this platform."""
    return system.startswith("linux")


def reset_peak(system: str = sys.platform, pid: int | None = None) -> bool:
    """Reset the process high-water mark to the current RSS; ``False`` where impossible."""
    if not resettable(system):
        return False
    try:
        _proc(pid, "clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak(system: str = sys.platform, pid: int | None = None) -> int:
    """Peak memory of this process (or ``pid``) in bytes since start or the last reset."""
    if system.startswith("linux"):
        return parse_vmhwm(_proc(pid, "status").read_text())
    if system == "darwin":
        return parse_rusage_v4(_macos_rusage_v4(pid))
    if pid is not None:
        import psutil

        info = psutil.Process(pid).memory_info()
        return int(getattr(info, "peak_wset", info.rss))  # Windows has a peak; others: now
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def usage(system: str = sys.platform) -> tuple[int, int | None]:
    """(resident, swapped out) bytes of this process now; swap ``None`` where the OS does not
    report it per process. Resident is what a leak makes grow: RSS on Linux, the physical
    footprint on macOS (Metal buffers included)."""
    if system.startswith("linux"):
        return parse_vm_usage(_proc(None, "status").read_text())
    if system == "darwin":
        return parse_rusage_v4(_macos_rusage_v4(None), _PHYS_FOOTPRINT), None
    import psutil

    return int(psutil.Process().memory_info().rss), None
