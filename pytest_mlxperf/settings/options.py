"""Option definitions and value parsers, shared by the pytest plugin and the ``mlxperf`` CLI.

Every setting has one definition here, a row of ``OPTIONS``, from which come its command-line
flag (``--mlxperf-NAME``), its ini key (``mlxperf_NAME``), its environment variable
(``MLXPERF_NAME``), its field of ``config.Settings`` and, if it is one, its argument of the
``mlxperf`` marker (with the marker's help). Adding a setting is adding a row. Parsers raise
``ValueError`` with a message that says what was expected.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any

from pytest_mlxperf.stats.metrics import METRICS, metric

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected a boolean (true/false, yes/no, 1/0), got {text!r}")


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"expected {what}, got {text!r}")
    return value


def parse_positive_int(text: str) -> int:
    value = _number(text, "a whole number >= 1")
    if value != int(value) or value < 1:
        raise ValueError(f"expected a whole number >= 1, got {text!r}")
    return int(value)


def parse_non_negative_int(text: str) -> int:
    value = _number(text, "a whole number >= 0")
    if value != int(value) or value < 0:
        raise ValueError(f"expected a whole number >= 0, got {text!r}")
    return int(value)


def parse_cpus(text: str) -> int | None:
    """``"all"`` (no restriction) → ``None``, else a count of cores."""
    if text.strip().lower() == "all":
        return None
    try:
        return parse_positive_int(text)
    except ValueError:
        raise ValueError(f"expected 'all' or a whole number of cores >= 1, got {text!r}") from None


def parse_seconds(text: str) -> float:
    value = _number(text, "a number of seconds >= 0")
    if value < 0:
        raise ValueError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def parse_positive_seconds(text: str) -> float:
    value = _number(text, "a number of seconds > 0")
    if value <= 0:
        raise ValueError(f"expected a number of seconds > 0, got {text!r}")
    return value


_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1e3,
    "MB": 1e6,
    "GB": 1e9,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}


def parse_size(text: str) -> int:
    """``"8GB"``, ``"512 MiB"``, ``"1e9"`` → bytes (GB = 1e9, as mlx-lm reports memory)."""
    match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"expected a size like '8GB' or '512MiB', got {text!r}")
    value = _number(match.group(1), "a size like '8GB' or '512MiB'") * _SIZE_UNITS[unit]
    if value < 1:
        raise ValueError(f"expected a size > 0, got {text!r}")
    return int(value)


def parse_alpha(text: str) -> float:
    value = _number(text, "a significance level between 0 and 1")
    if not 0 < value < 1:
        raise ValueError(f"expected a significance level between 0 and 1 (exclusive), got {text!r}")
    return value


def parse_tolerance(text: str) -> float:
    """``"5%"`` or ``"0.05"`` → 0.05. A bare number must be a fraction below 1, so that "5" is
    rejected rather than read as 500%; a percentage may exceed 100% (a memory limit)."""
    raw = str(text).strip()
    percent = raw.endswith("%")
    value = _number(raw[:-1] if percent else raw, "a tolerance like '5%' or '0.05'")
    value = value / 100 if percent else value
    if value <= 0:
        raise ValueError(f"a tolerance must be greater than 0, got {text!r}")
    if not percent and value >= 1:
        raise ValueError(
            f"tolerance {text!r} is a fraction >= 1 (= {value:.0%}); write '{value:g}%' if you "
            f"meant percent, or '{value * 100:g}%' if you really meant {value:.0%}"
        )
    return value


def parse_tolerances(text: str) -> dict[str, float]:
    """``"generation_tps=5%, peak_memory=3%"``; a bare ``"5%"`` applies to every gated metric."""
    result: dict[str, float] = {}
    for item in text.replace("\n", ",").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep:
            result.update({m.name: parse_tolerance(name) for m in METRICS.values() if m.gated})
            continue
        metric(name.strip())
        result[name.strip()] = parse_tolerance(value)
    return result


def tolerances_from_marker(value: Any) -> dict[str, float]:
    """A marker's ``tolerance=``: a dict ``{"generation_tps": "5%"}`` or a string as above."""
    if isinstance(value, Mapping):
        return {metric(str(k)).name: parse_tolerance(str(v)) for k, v in value.items()}
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return parse_tolerances(str(value))
    raise ValueError(f"tolerance must be a dict or a string like '5%', got {value!r}")


@dataclass(frozen=True)
class Option:
    """One setting: its type, parser, default and help, and the names it goes by.

    ``type`` is the value's Python type; the ``Settings`` field is ``type | None`` where the
    default is ``None``. ``marker=True`` makes it an argument of the ``mlxperf`` marker, whose
    values are Python values as a test writes them: a bool option takes a bool as it is, any
    other value is parsed from its text, unless ``marker_parse`` parses it; with
    ``marker_merges`` a marker's mapping adds to the session's instead of replacing it.
    """

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    _: KW_ONLY
    type: Any
    flag: bool = False
    metavar: str | None = None
    shown_default: str | None = None
    marker: bool = False
    marker_parse: Callable[[Any], Any] | None = None
    marker_merges: bool = False

    @property
    def default_text(self) -> str:
        """The default as ``--help`` shows it."""
        if self.shown_default is not None:
            return self.shown_default
        if self.flag:
            return "off"
        return "none" if self.default is None else str(self.default)

    @property
    def annotation(self) -> Any:
        """The type of the ``Settings`` field."""
        return self.type if self.default is not None else self.type | None

    @property
    def cli(self) -> str:
        return "--mlxperf" if self.name == "enabled" else "--mlxperf-" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        return "mlxperf" if self.name == "enabled" else "mlxperf_" + self.name

    @property
    def env(self) -> str:
        return "MLXPERF" if self.name == "enabled" else "MLXPERF_" + self.name.upper()

    def from_marker(self, value: Any) -> Any:
        """A marker argument's value (a bool, a number, a dict or text), parsed."""
        if self.marker_parse is not None:
            return self.marker_parse(value)
        if self.type is bool and isinstance(value, bool):
            return value
        return self.parse(str(value))


def _default_tolerances() -> str:
    return ", ".join(f"{m.name}={m.default_tolerance:.0%}" for m in METRICS.values() if m.gated)


# The order is that of --help, of the Settings fields and of the marker's arguments.
OPTIONS: tuple[Option, ...] = (
    Option(
        "enabled",
        parse_bool,
        False,
        "run performance tests (skipped otherwise)",
        type=bool,
        flag=True,
    ),
    Option(
        "save_baselines",
        parse_bool,
        False,
        "record this run's results as the new baselines (regressions are reported, not failed)",
        type=bool,
        flag=True,
    ),
    Option(
        "baseline_runs",
        parse_positive_int,
        5,
        "saved runs a baseline keeps and pools while package versions stay the same (record "
        "a baseline from several separate runs: processes differ more than repetitions do)",
        type=int,
        metavar="N",
    ),
    Option(
        "baselines_dir",
        str,
        "baselines",
        "folder of baseline files, relative to rootdir",
        type=str,
        metavar="DIR",
    ),
    Option(
        "json",
        str,
        None,
        "write all results, raw timestamps included, to this JSON file",
        type=str,
        metavar="PATH",
    ),
    Option(
        "tolerance",
        parse_tolerances,
        {},
        "per-metric tolerances, e.g. 'generation_tps=5%%,peak_memory=3%%' or '5%%' for all",
        type=Mapping[str, float],
        metavar="SPEC",
        shown_default=_default_tolerances().replace("%", "%%"),
        marker=True,
        marker_parse=tolerances_from_marker,
        marker_merges=True,
    ),
    Option(
        "repetitions",
        parse_positive_int,
        5,
        "timed repetitions per measurement",
        type=int,
        metavar="N",
        marker=True,
    ),
    Option(
        "warmup",
        parse_non_negative_int,
        1,
        "untimed warm-up runs of the same shape",
        type=int,
        metavar="N",
        marker=True,
    ),
    Option(
        "cooldown",
        parse_seconds,
        0.0,
        "seconds to sleep between repetitions",
        type=float,
        metavar="SECONDS",
        marker=True,
    ),
    Option(
        "confirm",
        parse_non_negative_int,
        1,
        "re-measure a regression this many times before failing; it fails only if every "
        "re-measurement regresses too (0: fail at once)",
        type=int,
        metavar="N",
        marker=True,
    ),
    Option(
        "alpha",
        parse_alpha,
        0.01,
        "significance level of the one-sided Mann-Whitney U test",
        type=float,
        metavar="P",
        marker=True,
    ),
    Option(
        "strict",
        parse_bool,
        False,
        "also fail tests that have no baseline, an inconclusive or a not-comparable one",
        type=bool,
        flag=True,
        marker=True,
    ),
    Option(
        "machine",
        str,
        None,
        "name this machine for baselines instead of its fingerprint (for machines known to be "
        "equivalent)",
        type=str,
        metavar="NAME",
    ),
    Option(
        "isolate",
        parse_bool,
        True,
        "run each model in its own worker process (crash, hang and memory isolation)",
        type=bool,
        metavar="BOOL",
    ),
    Option(
        "cpus",
        parse_cpus,
        None,
        "confine each worker and started server to this many cores (Linux): steadier MLX "
        "decode on a small shared runner, at some speed; part of a result's identity",
        type=int,
        metavar="N",
        shown_default="all",
    ),
    Option(
        "repack",
        parse_bool,
        None,
        "llama.cpp's weight repacking (use_extra_bufts) for models and servers the fixture "
        "loads; off is llama-server's --no-repack, and avoids llama.cpp's AMX crash on some "
        "Intel CPUs (README: Known backend problems); part of a result's identity when off",
        type=bool,
        metavar="BOOL",
        shown_default="on, llama.cpp's own",
    ),
    Option(
        "timeout",
        parse_positive_seconds,
        600.0,
        "seconds one load or repetition may take in a worker before it is stopped; for "
        "servers, the start and each request",
        type=float,
        metavar="SECONDS",
    ),
    Option(
        "memory_limit",
        parse_size,
        None,
        "stop a worker whose resident memory exceeds this size, e.g. '8GB' (polled)",
        type=int,
        metavar="SIZE",
    ),
    Option(
        "cache_dir",
        str,
        None,
        "cache folder of synthetic models (default: user cache dir)",
        type=str,
        metavar="DIR",
    ),
)
OPTIONS_BY_NAME = {o.name: o for o in OPTIONS}


def argparse_type(option: Option) -> Callable[[str], Any]:
    """The option's parser as an argparse ``type=``: bad values fail at parse time."""

    def convert(text: str) -> Any:
        try:
            return option.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = option.name
    return convert
