"""The one error of the serving package: a server that cannot be started, reached or trusted."""

from __future__ import annotations

from pytest_mlxperf.measuring.base import BackendError


class ServerError(BackendError):
    """A server did not start, refused or broke a request, or answered something a measurement
    cannot trust (a malformed event, a different amount of work); the message names the server
    and what happened."""
