"""The factory's one error type and its guarded import of optional packages.

Every failure to build a synthetic model, from a bad shape to a missing ``tokenizers``, reaches
the caller as ``SynthError`` (a ``ValueError``), so that the plugin and the ``mlxperf synth``
command can report it in one line; a missing package is named together with the extra that
installs it, and the heavy packages are imported only when a build needs them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from pytest_mlxperf.host.packages import INSTALL_HINTS


class SynthError(ValueError):
    """A synthetic model cannot be built as asked: bad spec, shape or quantization, or a
    missing package (the message then says what to install)."""


def require(module: str, extra: str) -> ModuleType:
    """Import an optional dependency or raise SynthError with the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SynthError(
            f"building synthetic models needs {module.split('.')[0]!r}: {INSTALL_HINTS[extra]}"
        ) from exc
