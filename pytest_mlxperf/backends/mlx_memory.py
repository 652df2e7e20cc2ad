"""MLX's own allocator figures (bytes), on old and new mlx alike.

mlx moved its memory functions from ``mx.metal`` to the top level of ``mlx.core``; older
releases have only the ``mx.metal`` ones, newer ones deprecate them. Every function takes the
``mlx.core`` module as an argument, so importing this module imports no mlx and the old API can
be tested with a stand-in object.
"""

from __future__ import annotations

from typing import Any


def _function(mx: Any, name: str) -> Any:
    """``mx.<name>`` where mlx has it at the top level, else ``mx.metal.<name>``."""
    return getattr(mx, name) if hasattr(mx, name) else getattr(mx.metal, name)


def reset_peak(mx: Any) -> None:
    """Reset the allocator peak to the memory in use now."""
    _function(mx, "reset_peak_memory")()


def peak(mx: Any) -> int:
    """The allocator peak since the last ``reset_peak`` (or the start of the process)."""
    return int(_function(mx, "get_peak_memory")())


def active(mx: Any) -> int:
    """The memory the allocator holds for live arrays now (weights, caches, anything else)."""
    return int(_function(mx, "get_active_memory")())
