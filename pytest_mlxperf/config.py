"""Settings resolved once per session, then per test: marker > command line > env > ini.

Every error names where the bad value came from (flag, environment variable, ini key, marker).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_mlxperf.metrics import METRICS
from pytest_mlxperf.options import (
    OPTIONS,
    parse_alpha,
    parse_bool,
    parse_non_negative_int,
    parse_positive_int,
    parse_seconds,
    tolerances_from_marker,
)


class SettingsError(ValueError):
    """A setting has a bad value; the message names its source."""


@dataclass(frozen=True)
class Settings:
    enabled: bool = False
    save_baselines: bool = False
    baseline_runs: int = 5
    baselines_dir: str = "baselines"
    json: str | None = None
    repetitions: int = 5
    warmup: int = 1
    cooldown: float = 0.0
    confirm: int = 1
    alpha: float = 0.01
    tolerance: Mapping[str, float] = field(default_factory=dict)
    strict: bool = False
    machine: str | None = None
    isolate: bool = True
    timeout: float = 600.0
    memory_limit: int | None = None
    cache_dir: str | None = None

    def tolerance_for(self, metric_name: str) -> float:
        return self.tolerance.get(metric_name, METRICS[metric_name].default_tolerance)


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
                try:
                    values[option.name] = option.parse(str(raw))
                except ValueError as exc:
                    raise SettingsError(f"{source}: {exc}") from None
                break
    return Settings(**values)


MARKER_ARGS: dict[str, Callable[[Any], Any]] = {
    "tolerance": tolerances_from_marker,
    "repetitions": lambda v: parse_positive_int(str(v)),
    "warmup": lambda v: parse_non_negative_int(str(v)),
    "cooldown": lambda v: parse_seconds(str(v)),
    "confirm": lambda v: parse_non_negative_int(str(v)),
    "alpha": lambda v: parse_alpha(str(v)),
    "strict": lambda v: v if isinstance(v, bool) else parse_bool(str(v)),
}


def with_marker(settings: Settings, kwargs: Mapping[str, Any], where: str) -> Settings:
    """The session settings overridden by one test's ``mlxperf`` marker arguments."""
    unknown = sorted(set(kwargs) - set(MARKER_ARGS))
    if unknown:
        raise SettingsError(
            f"mlxperf marker on {where}: unknown argument(s) {', '.join(unknown)}; "
            f"known: {', '.join(MARKER_ARGS)}"
        )
    changes: dict[str, Any] = {}
    for name, value in kwargs.items():
        try:
            changes[name] = MARKER_ARGS[name](value)
        except ValueError as exc:
            raise SettingsError(f"mlxperf marker on {where}: {name}={value!r}: {exc}") from None
    if "tolerance" in changes:
        changes["tolerance"] = {**settings.tolerance, **changes["tolerance"]}
    return dataclasses.replace(settings, **changes)
