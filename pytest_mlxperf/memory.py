"""Process-level peak memory of the current process, and whether it can be reset.

Linux: ``VmHWM`` from ``/proc/self/status``, reset by writing ``5`` to ``/proc/self/clear_refs``.
macOS: the lifetime maximum *physical footprint* (``proc_pid_rusage``, ``rusage_info_v4``), which
counts Metal buffers that RSS does not. It cannot be reset, so on macOS the session gives each
measurement a fresh worker process (``resettable() is False``).

The platform is an argument everywhere, so both paths are tested on either system.
"""

from __future__ import annotations

import re
import struct
import sys
from pathlib import Path

_HWM = re.compile(r"^VmHWM:\s+(\d+)\s+kB", re.MULTILINE)
# rusage_info_v4 (<sys/resource.h>): a 16-byte uuid, then 35 uint64 fields: 18 of v2, 9 added
# by v3, then ri_logical_writes and ri_lifetime_max_phys_footprint (index 28) of v4
RUSAGE_INFO_V4 = 4
_V4_FIELDS = 35
_LIFETIME_MAX_FOOTPRINT = 28


def parse_vmhwm(status: str) -> int:
    """Bytes of the ``VmHWM`` line of a ``/proc/<pid>/status`` text."""
    match = _HWM.search(status)
    if match is None:
        raise ValueError("no VmHWM line in /proc status")
    return int(match.group(1)) * 1024


def parse_rusage_v4(buffer: bytes) -> int:
    """``ri_lifetime_max_phys_footprint`` (bytes) of a raw ``rusage_info_v4`` struct."""
    fields = struct.unpack_from(f"=16s{_V4_FIELDS}Q", buffer)
    return int(fields[1 + _LIFETIME_MAX_FOOTPRINT])


def _macos_rusage_v4() -> bytes:
    import ctypes
    import os

    libc = ctypes.CDLL("/usr/lib/libSystem.B.dylib", use_errno=True)
    buffer = ctypes.create_string_buffer(16 + 8 * _V4_FIELDS)
    if libc.proc_pid_rusage(os.getpid(), RUSAGE_INFO_V4, buffer) != 0:
        raise OSError(ctypes.get_errno(), "proc_pid_rusage failed")
    return buffer.raw


def resettable(system: str = sys.platform) -> bool:
    """Whether the process peak can be reset between repetitions on this platform."""
    return system.startswith("linux")


def reset_peak(system: str = sys.platform) -> bool:
    """Reset the process high-water mark to the current RSS; ``False`` where impossible."""
    if not resettable(system):
        return False
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak(system: str = sys.platform) -> int:
    """Peak memory of this process in bytes since start or the last reset."""
    if system.startswith("linux"):
        return parse_vmhwm(Path("/proc/self/status").read_text())
    if system == "darwin":
        return parse_rusage_v4(_macos_rusage_v4())
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
