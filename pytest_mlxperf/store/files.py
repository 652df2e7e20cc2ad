"""Reading and writing the project's JSON files: atomic writes (a reader, or a process killed
mid-write, never sees half a file), locks kept out of the folders users commit, and reads whose
errors say what is wrong and where."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from filelock import FileLock


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it, then rename it over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a baseline is for sharing
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class JSONFileError(ValueError):
    """A file is unreadable or not valid JSON; the message says why (line and column for bad
    JSON). Callers add the file's path and their own context."""


def read_json(path: Path) -> Any:
    """Parse a JSON file. A missing file raises ``FileNotFoundError``, anything else that is
    wrong ``JSONFileError``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise JSONFileError(f"cannot be read ({exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise JSONFileError(
            f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc
    except RecursionError as exc:
        raise JSONFileError("invalid JSON: nested too deeply") from exc


def lock_for(path: Path, timeout: float = -1) -> FileLock:
    """A cross-process lock that guards ``path``. The lock file lives in the temporary folder,
    named by a hash of the absolute path, so a baselines folder under version control never
    gets ``.lock`` files beside its JSON."""
    from filelock import FileLock

    digest = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:20]
    folder = Path(tempfile.gettempdir()) / "pytest-mlxperf-locks"
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / f"{Path(path).name}.{digest}.lock"), timeout=timeout)
