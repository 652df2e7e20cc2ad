"""Plugin behaviour through pytester: options, --help, bad values, ini/env/marker precedence,
skipping without --mlxperf. None of these load a model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SHOW_SETTINGS = """
import pytest

def test_settings(mlxperf):
    s = mlxperf.settings
    print("SETTINGS", s.repetitions, s.warmup, s.alpha, dict(s.tolerance))
"""


def test_importing_the_plugin_imports_no_backend() -> None:
    code = (
        "import sys, pytest_mlxperf.plugin, pytest_mlxperf.cli;"
        "bad = [m for m in ('mlx', 'mlx_lm', 'llama_cpp', 'transformers') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_help_lists_every_option_with_its_ini_and_env_twin(pytester: pytest.Pytester) -> None:
    from pytest_mlxperf.settings.options import OPTIONS

    result = pytester.runpytest("--help")
    text = result.stdout.str()
    for option in OPTIONS:
        assert option.cli in text
        assert option.ini in text
    assert "MLXPERF_REPETITIONS" in text
    assert "generation_tps=10%" in text  # defaults shown


def test_perf_tests_are_skipped_without_the_flag(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        def test_uses_fixture(mlxperf):
            raise AssertionError("must not run")

        @pytest.mark.mlxperf
        def test_marked():
            raise AssertionError("must not run")

        def test_plain():
            pass
        """
    )
    result = pytester.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*run with --mlxperf*"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mlxperf-repetitions", "abc"], "*--mlxperf-repetitions*expected a whole number >= 1*"),
        (["--mlxperf-repetitions", "0"], "*--mlxperf-repetitions*expected a whole number >= 1*"),
        (["--mlxperf-tolerance", "abc"], "*--mlxperf-tolerance*tolerance like '5%' or '0.05'*"),
        (["--mlxperf-tolerance", "5"], "*--mlxperf-tolerance*write '5%'*"),
        (["--mlxperf-tolerance", "speed=5%"], "*unknown metric 'speed'*generation_tps*"),
        (["--mlxperf-alpha", "1.5"], "*--mlxperf-alpha*between 0 and 1*"),
        (["--mlxperf-isolate", "maybe"], "*--mlxperf-isolate*expected a boolean*"),
    ],
)
def test_bad_command_line_values_fail_at_parse_time(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_bad_ini_value_names_the_ini_file(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmlxperf_repetitions = many\n")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*mlxperf_repetitions in *tox.ini*expected a whole number*"])


def test_bad_env_value_names_the_variable(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLXPERF_ALPHA", "0")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*environment variable MLXPERF_ALPHA*between 0 and 1*"])


def test_precedence_marker_over_cli_over_env_over_ini(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makefile(
        ".toml",
        pyproject='[tool.pytest.ini_options]\nmlxperf_repetitions = "3"\nmlxperf_warmup = "4"\n'
        'mlxperf_alpha = "0.02"\nmlxperf_tolerance = "generation_tps=7%"\n',
    )
    pytester.makepyfile(SHOW_SETTINGS)
    ini_only = pytester.runpytest("--mlxperf", "-s")
    ini_only.stdout.fnmatch_lines(["*SETTINGS 3 4 0.02 {'generation_tps': 0.07}"])

    monkeypatch.setenv("MLXPERF_REPETITIONS", "6")
    env = pytester.runpytest("--mlxperf", "-s")
    env.stdout.fnmatch_lines(["*SETTINGS 6 4 0.02 *"])

    cli = pytester.runpytest("--mlxperf", "-s", "--mlxperf-repetitions", "9")
    cli.stdout.fnmatch_lines(["*SETTINGS 9 4 0.02 *"])

    pytester.makepyfile(
        SHOW_SETTINGS.replace(
            "def test_settings",
            "@pytest.mark.mlxperf(repetitions=11, tolerance={'peak_memory': '3%'})\n"
            "def test_settings",
        )
    )
    marker = pytester.runpytest("--mlxperf", "-s", "--mlxperf-repetitions", "9")
    marker.stdout.fnmatch_lines(
        ["*SETTINGS 11 4 0.02 {'generation_tps': 0.07, 'peak_memory': 0.03}"]
    )


def test_enable_from_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmlxperf = true\n")
    pytester.makepyfile(SHOW_SETTINGS)
    pytester.runpytest("-s").stdout.fnmatch_lines(["*SETTINGS 5 1 0.01 {}"])


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("repetitons=3", "*unknown argument(s) repetitons; known: tolerance, repetitions*"),
        ("tolerance='abc'", "*tolerance='abc'*tolerance like '5%' or '0.05'*"),
        ("tolerance={'speed': '5%'}", "*unknown metric 'speed'*"),
        ("repetitions=0", "*repetitions=0*whole number >= 1*"),
    ],
)
def test_bad_marker_arguments_error_the_test_and_name_it(
    pytester: pytest.Pytester, marker: str, message: str
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.mlxperf({marker})
        def test_bad(mlxperf):
            pass

        def test_other():
            pass
        """
    )
    result = pytester.runpytest("--mlxperf")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*mlxperf marker on test_bad_marker_arguments*test_bad*"])
    result.stdout.fnmatch_lines([message])


def test_unknown_backend_and_missing_model_are_clear_errors(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_backend(mlxperf):
            mlxperf.load("tensorflow", "synth:tiny")

        def test_model(mlxperf):
            mlxperf.load("mlx", "/no/such/model")

        def test_preset(mlxperf):
            mlxperf.load("llamacpp", "synth:no-such-preset")
        """
    )
    result = pytester.runpytest("--mlxperf", "--mlxperf-isolate", "no")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(
        [
            "*unknown backend 'tensorflow'; known backends: mlx, llamacpp*",
            "*model '/no/such/model' not found*",
            "*no-such-preset*",
        ]
    )


def test_missing_backend_skips_with_the_install_command(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_mlxperf import backends

    monkeypatch.setitem(
        backends.BACKENDS,
        "mlx",
        ("pytest_mlxperf.backends.mlx", "no_such_mlx_module", 'pip install "pytest-mlxperf[mlx]"'),
    )
    pytester.makepyfile(
        """
        def test_perf(mlxperf):
            mlxperf.load("mlx", "synth:tiny")
        """
    )
    result = pytester.runpytest("--mlxperf", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*backend 'mlx' is not installed*"
            'install it with: pip install "pytest-mlxperf[[]mlx[]]"*'
        ]
    )


def test_repo_id_missing_from_the_hf_cache_is_never_downloaded(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    pytester.makepyfile(
        """
        def test_perf(mlxperf):
            mlxperf.load("mlx", "mlx-community/Llama-3.2-3B-Instruct-4bit")
        """
    )
    result = pytester.runpytest_subprocess("--mlxperf", "--mlxperf-isolate", "no")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*'mlx-community/Llama-3.2-3B-Instruct-4bit' is not in the local Hugging Face cache*"
            "never downloads*hf download mlx-community/Llama-3.2-3B-Instruct-4bit*"
        ]
    )
