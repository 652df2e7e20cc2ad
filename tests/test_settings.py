"""Every setting is defined once, as a row of ``OPTIONS``: the ``Settings`` fields, the marker's
arguments and the marker's help are made from it. These tests prove that they agree, and pin
what marker values mean (the pytester runs in test_plugin.py cover the same through pytest)."""

from __future__ import annotations

import dataclasses
import re
import typing

import pytest

from pytest_mlxperf.settings.config import (
    MARKER_HELP,
    MARKER_OPTIONS,
    Settings,
    SettingsError,
    resolve,
    with_marker,
)
from pytest_mlxperf.settings.options import OPTIONS, OPTIONS_BY_NAME
from pytest_mlxperf.stats.metrics import METRICS


def test_settings_has_a_field_per_option_in_table_order_with_its_type_and_default() -> None:
    fields = dataclasses.fields(Settings)
    assert [f.name for f in fields] == [o.name for o in OPTIONS]
    for f, option in zip(fields, OPTIONS, strict=True):
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        assert default == option.default, f.name
        assert f.type == option.annotation, f.name
    assert Settings() == Settings(**{o.name: o.default for o in OPTIONS})


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
def test_every_default_is_a_value_of_its_type_that_its_parser_gives(option: typing.Any) -> None:
    assert option.type is bool or not option.flag
    if option.default is None:
        return
    assert isinstance(option.default, typing.get_origin(option.type) or option.type)
    if isinstance(option.default, (bool, int, float, str)):
        assert option.parse(str(option.default)) == option.default


def test_settings_are_frozen_built_by_keyword_and_share_no_mutable_default() -> None:
    settings = Settings(machine="box", confirm=2)
    assert (settings.machine, settings.confirm, settings.repetitions) == ("box", 2, 5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.machine = "other"  # type: ignore[misc]
    assert Settings().tolerance is not Settings().tolerance
    assert Settings().tolerance_for("generation_tps") == METRICS["generation_tps"].default_tolerance
    assert Settings(tolerance={"generation_tps": 0.2}).tolerance_for("generation_tps") == 0.2


def test_marker_arguments_are_options_and_only_they_parse_marker_values() -> None:
    assert MARKER_OPTIONS
    for name, option in MARKER_OPTIONS.items():
        assert OPTIONS_BY_NAME[name] is option
        assert option.from_marker(option.default) == option.default
    for option in OPTIONS:
        if option.marker_parse is not None or option.marker_merges:
            assert option.marker, option.name


def test_marker_help_lists_exactly_the_marker_arguments(pytester: pytest.Pytester) -> None:
    signature = re.fullmatch(r"mlxperf\(([^)]*)\): .+", MARKER_HELP)
    assert signature is not None
    assert signature.group(1) == ", ".join(f"{name}=None" for name in MARKER_OPTIONS)
    assert f"@pytest.mark.{MARKER_HELP}" in pytester.runpytest("--markers").stdout.str()


def test_marker_takes_python_values_and_merges_tolerances() -> None:
    session = Settings(tolerance={"generation_tps": 0.07, "peak_memory": 0.1}, strict=False)
    settings = with_marker(
        session,
        {
            "tolerance": {"peak_memory": "3%"},
            "repetitions": 11,
            "warmup": "2",
            "cooldown": 0.5,
            "confirm": 0,
            "alpha": 0.05,
            "strict": True,
        },
        "t.py::test",
    )
    assert dict(settings.tolerance) == {"generation_tps": 0.07, "peak_memory": 0.03}
    assert (settings.repetitions, settings.warmup, settings.cooldown) == (11, 2, 0.5)
    assert (settings.confirm, settings.alpha, settings.strict) == (0, 0.05, True)
    assert dict(session.tolerance) == {"generation_tps": 0.07, "peak_memory": 0.1}
    assert with_marker(session, {}, "t.py::test") == session
    assert with_marker(session, {"strict": "yes"}, "t.py::test").strict is True
    assert with_marker(session, {"strict": 0}, "t.py::test").strict is False
    every = with_marker(Settings(), {"tolerance": "4%"}, "t.py::test").tolerance
    assert every == {m.name: 0.04 for m in METRICS.values() if m.gated}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"repetitons": 3, "speed": 1},
            "mlxperf marker on t.py::test: unknown argument(s) repetitons, speed; "
            f"known: {', '.join(MARKER_OPTIONS)}",
        ),
        (
            {"repetitions": 0},
            "mlxperf marker on t.py::test: repetitions=0: expected a whole number >= 1, got '0'",
        ),
        ({"repetitions": True}, "repetitions=True: expected a whole number >= 1, got 'True'"),
        ({"strict": "maybe"}, "strict='maybe': expected a boolean"),
        ({"alpha": 1}, "alpha=1: expected a significance level between 0 and 1"),
        (
            {"tolerance": True},
            "tolerance=True: tolerance must be a dict or a string like '5%', got True",
        ),
        ({"tolerance": {"speed": "5%"}}, "tolerance={'speed': '5%'}: unknown metric 'speed'"),
    ],
)
def test_bad_marker_arguments_name_the_test_and_the_argument(
    kwargs: dict[str, typing.Any], message: str
) -> None:
    with pytest.raises(SettingsError) as error:
        with_marker(Settings(), kwargs, "t.py::test")
    assert str(error.value).startswith("mlxperf marker on t.py::test: ")
    assert message in str(error.value)


def test_resolve_takes_cli_over_env_over_ini_and_names_a_bad_value_source() -> None:
    ini = {"mlxperf_repetitions": "3", "mlxperf_warmup": "4", "mlxperf_alpha": "0.02"}
    env = {"MLXPERF_REPETITIONS": "6", "MLXPERF_WARMUP": "2"}
    settings = resolve({"repetitions": 9, "warmup": None}, env, ini.get, "tox.ini")
    assert (settings.repetitions, settings.warmup, settings.alpha) == (9, 2, 0.02)
    assert settings.confirm == OPTIONS_BY_NAME["confirm"].default
    with pytest.raises(SettingsError, match=r"^environment variable MLXPERF_ALPHA: expected"):
        resolve({}, {"MLXPERF_ALPHA": "0"}, ini.get, "tox.ini")
    with pytest.raises(SettingsError, match=r"^mlxperf_warmup in tox.ini: expected"):
        resolve({}, {}, {"mlxperf_warmup": "-1"}.get, "tox.ini")
