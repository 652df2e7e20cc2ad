"""Process-level peak memory of the current process, resettable where the OS allows it.

Linux: ``VmHWM`` from ``/proc/self/status``, reset by writing ``5`` to ``/proc/self/clear_refs``.
macOS: the lifetime maximum from ``getrusage`` (bytes there); it cannot be reset, so a
per-repetition figure needs one worker process per measurement.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_HWM = re.compile(r"^VmHWM:\s+(\d+)\s+kB", re.MULTILINE)


def parse_vmhwm(status: str) -> int:
    """Bytes of the ``VmHWM`` line of a ``/proc/<pid>/status`` text."""
    match = _HWM.search(status)
    if match is None:
        raise ValueError("no VmHWM line in /proc status")
    return int(match.group(1)) * 1024


def reset_peak() -> bool:
    """Reset the process high-water mark to the current RSS; ``False`` where impossible."""
    if sys.platform != "linux":
        return False
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak() -> int:
    """Peak resident memory of this process in bytes since start or the last reset."""
    if sys.platform == "linux":
        return parse_vmhwm(Path("/proc/self/status").read_text())
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)
