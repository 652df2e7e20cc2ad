"""Settings resolved once per session, then per test: marker > command line > env > ini.

Every error names where the bad value came from (flag, environment variable, ini key, marker).
The ``Settings`` fields and the marker's arguments are made from ``options.OPTIONS``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from pytest_mlxperf.settings.options import OPTIONS, OPTIONS_BY_NAME, Option
from pytest_mlxperf.stats.metrics import tolerance_of

_T = TypeVar("_T")


class SettingsError(ValueError):
    """A setting has a bad value; the message names its source."""


def _field(option: Option) -> Any:
    """The option's dataclass field: a mutable default (a dict) is copied for each instance."""
    if isinstance(option.default, Hashable):
        return dataclasses.field(default=option.default)
    return dataclasses.field(default_factory=functools.partial(copy.copy, option.default))


def _fields_from_options(cls: type[_T]) -> type[_T]:
    """Make ``cls`` a frozen dataclass with one field per option, in table order."""
    cls.__annotations__ = {option.name: option.annotation for option in OPTIONS}
    for option in OPTIONS:
        setattr(cls, option.name, _field(option))
    return dataclasses.dataclass(frozen=True)(cls)


@_fields_from_options
class Settings:
    """The settings of a session, or of one test once its marker is applied: a frozen
    dataclass with one field per ``Option`` of ``options.OPTIONS``, of its name, type and
    default (``inspect.signature(Settings)`` lists them). Built by keyword:
    ``Settings(machine="box", confirm=2)``."""

    if TYPE_CHECKING:  # the fields are made from OPTIONS when the module is imported

        def __init__(self, **values: Any) -> None: ...

        def __getattr__(self, name: str) -> Any: ...

    def tolerance_for(self, metric_name: str) -> float:
        """The metric's tolerance: the one set for this run or test, else the metric's own."""
        return tolerance_of(metric_name, self.tolerance.get(metric_name))


def resolve(
    cli: Mapping[str, Any],
    env: Mapping[str, str],
    ini: Callable[[str], Any],
    ini_source: str = "ini",
) -> Settings:
    """Settings from command-line values (already parsed; ``None`` = not given), environment
    and ini (raw strings, parsed here; ``""``/``None`` = not set)."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        if cli.get(option.name) is not None:
            values[option.name] = cli[option.name]
            continue
        for source, raw in (
            (f"environment variable {option.env}", env.get(option.env)),
            (f"{option.ini} in {ini_source}", ini(option.ini)),
        ):
            if raw not in (None, ""):
                values[option.name] = _parsed(option, source, str(raw))
                break
    return Settings(**values)


def _parsed(option: Option, source: str, raw: str) -> Any:
    try:
        return option.parse(raw)
    except ValueError as exc:
        raise SettingsError(f"{source}: {exc}") from None


def from_environment(name: str, env: Mapping[str, str]) -> Any:
    """One setting from its environment variable alone (``None``: not set): for what runs
    outside a session's settings (a model loaded directly, a server started by hand, the CLI)
    yet follows what a session run in the same environment follows."""
    option = OPTIONS_BY_NAME[name]
    raw = env.get(option.env)
    return None if raw in (None, "") else _parsed(option, f"environment variable {option.env}", raw)


MARKER_OPTIONS: dict[str, Option] = {option.name: option for option in OPTIONS if option.marker}
MARKER_HELP = (
    f"mlxperf({', '.join(f'{name}=None' for name in MARKER_OPTIONS)}): a performance test "
    "(runs with --mlxperf); keyword arguments override the session settings for this test, "
    "e.g. tolerance={'generation_tps': '5%'}"
)


def with_marker(settings: Settings, kwargs: Mapping[str, Any], where: str) -> Settings:
    """The session settings overridden by one test's ``mlxperf`` marker arguments."""
    unknown = sorted(set(kwargs) - set(MARKER_OPTIONS))
    if unknown:
        raise SettingsError(
            f"mlxperf marker on {where}: unknown argument(s) {', '.join(unknown)}; "
            f"known: {', '.join(MARKER_OPTIONS)}"
        )
    changes: dict[str, Any] = {}
    for name, value in kwargs.items():
        option = MARKER_OPTIONS[name]
        try:
            changes[name] = option.from_marker(value)
        except ValueError as exc:
            raise SettingsError(f"mlxperf marker on {where}: {name}={value!r}: {exc}") from None
        if option.marker_merges:
            changes[name] = {**getattr(settings, name), **changes[name]}
    return dataclasses.replace(settings, **changes)
