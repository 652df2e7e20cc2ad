"""The pytest11 entry point: hooks only. Importing it imports no ML backend."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from pytest_mlxperf.fixtures import (
    NOT_GATED_KEY,
    RESULTS_KEY,
    SESSION_KEY,
    gate_benchmark,
    item_settings,
    mlxperf,
)
from pytest_mlxperf.interop.pytest_benchmark import benchmark_fixture, gate_summary, record_calls
from pytest_mlxperf.measuring.progress import TerminalProgress
from pytest_mlxperf.render.text import backend_table, table
from pytest_mlxperf.session import PerfSession
from pytest_mlxperf.settings.config import MARKER_HELP, resolve
from pytest_mlxperf.settings.options import OPTIONS, argparse_type
from pytest_mlxperf.stats.verdicts import Verdict
from pytest_mlxperf.store.results import results_document, write_json

__all__ = ["mlxperf"]

XDIST_DIR = "mlxperf_records_dir"
REGRESSION_PROPERTY = ("mlxperf", "regression")
STRICT_FAILURES = {Verdict.NEW, Verdict.NOT_COMPARABLE, Verdict.INCONCLUSIVE}
# verdicts whose details the summary spells out (regressions are in the failure report)
EXPLAINED = {Verdict.NOT_COMPARABLE, Verdict.INCONCLUSIVE, Verdict.IMPROVEMENT}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mlxperf", "performance regression tests for local LLM inference")
    for option in OPTIONS:
        help_text = (
            f"{option.help} (ini: {option.ini}; env: {option.env}; default: {option.default_text})"
        )
        if option.flag:
            group.addoption(
                option.cli,
                action="store_true",
                default=None,
                dest=f"mlxperf_{option.name}",
                help=help_text,
            )
        else:
            group.addoption(
                option.cli,
                type=argparse_type(option),
                default=None,
                dest=f"mlxperf_{option.name}",
                metavar=option.metavar,
                help=help_text,
            )
        parser.addini(option.ini, option.help, default=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    cli = {o.name: config.getoption(f"mlxperf_{o.name}") for o in OPTIONS}
    ini_source = str(config.inipath) if config.inipath else "ini"
    try:
        settings = resolve(cli, os.environ, config.getini, ini_source)
        config.stash[SESSION_KEY] = PerfSession(settings, Path(config.rootpath))
    except ValueError as exc:  # SettingsError, or settings this platform cannot honour
        raise pytest.UsageError(f"pytest-mlxperf: {exc}") from None


def pytest_sessionstart(session: pytest.Session) -> None:
    """Show the progress of measurements on the terminal: not under ``-q``, nor from xdist
    workers, whose output nobody sees."""
    config = session.config
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or config.get_verbosity() < 0 or hasattr(config, "workerinput"):
        return
    config.stash[SESSION_KEY].progress = TerminalProgress(
        reporter,
        config.pluginmanager.get_plugin("capturemanager"),
        live=bool(reporter.isatty),
        verbose=config.get_verbosity() > 0,
    )


def _is_perf(item: pytest.Item) -> bool:
    # a pytest-benchmark test runs without --mlxperf too; the marker only sets its tolerances
    names = getattr(item, "fixturenames", ())
    marked = item.get_closest_marker("mlxperf") is not None and "benchmark" not in names
    return marked or "mlxperf" in names


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.stash[SESSION_KEY].settings.enabled:
        return
    skip = pytest.mark.skip(reason="performance test: run with --mlxperf to measure it")
    for item in items:
        if _is_perf(item):
            item.add_marker(skip)


def _failing(item: pytest.Item) -> list[str]:
    results = item.stash.get(RESULTS_KEY, [])
    settings = item_settings(item) if results else None
    if settings is None or settings.save_baselines:
        return []
    return [
        r.report()
        for r in results
        if r.verdict is Verdict.REGRESSION or (settings.strict and r.verdict in STRICT_FAILURES)
    ]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """Under --mlxperf, gate what pytest-benchmark's ``benchmark`` fixture timed in the test."""
    fixture = None
    if item.config.stash[SESSION_KEY].settings.enabled:
        fixture = benchmark_fixture(getattr(item, "funcargs", {}))
    if fixture is not None:
        record_calls(fixture)
    outcome = yield
    if fixture is not None:
        gate_benchmark(item, fixture)
    return outcome


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    if call.when == "call":
        # every median and verdict as a test property: junitxml writes them as <property>s
        for result in item.stash.get(RESULTS_KEY, []):
            prefix = f"mlxperf.{result.key}"
            item.user_properties.append((f"{prefix}.verdict", result.verdict.value))
            for name in result.all_samples:
                item.user_properties.append((f"{prefix}.{name}", result.median(name)))
    report = yield
    if call.when != "call":
        return report
    if report.passed:
        failures = _failing(item)
        if failures:
            report.outcome = "failed"
            report.longrepr = "\n\n".join(failures)
            report.user_properties.append(REGRESSION_PROPERTY)
    return report


def pytest_report_teststatus(
    report: pytest.TestReport, config: pytest.Config
) -> tuple[str, str, str] | None:
    if report.when == "call" and REGRESSION_PROPERTY in report.user_properties:
        return "failed", "R", "PERF REGRESSION"
    return None


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    perf = config.stash[SESSION_KEY]
    benchmarks = gate_summary(
        perf.records,
        config.stash.get(NOT_GATED_KEY, []),
        config.getoption("benchmark_compare_fail", None),
    )
    if not perf.records and not benchmarks:
        return
    write = terminalreporter.write_line
    terminalreporter.write_sep("=", "mlxperf results")
    if not perf.records:
        write("\n".join(benchmarks))
        return
    write(f"machine: {perf.machine_id} {perf.fingerprint}")
    write(table(perf.records))
    side_by_side = backend_table(perf.records)
    if side_by_side:
        terminalreporter.write_sep("-", "backends side by side (same model, same workload)")
        write(side_by_side)
    for record in perf.records:
        if record["verdict"] in EXPLAINED:
            write(record["message"])
    noisy = [
        f"  {r['test']} [{r['key']}]: "
        + ", ".join(c["metric"] for c in r["comparisons"] if c.get("noisy"))
        for r in perf.records
        if any(c.get("noisy") for c in r["comparisons"])
    ]
    if noisy:
        write(
            "too noisy to resolve the tolerance (sample CV above half of it): add repetitions "
            "(--mlxperf-repetitions), record more baseline runs, or quiet the machine"
        )
        write("\n".join(noisy))
    new = sum(r["verdict"] == Verdict.NEW.value and not r["saved"] for r in perf.records)
    if new:
        write(f"{new} measurement(s) without a baseline: record them with --mlxperf-save-baselines")
    if benchmarks:
        write("\n".join(benchmarks))
    if perf.settings.json:
        write(f"results written to {perf.settings.json}")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: give each worker the folder where it leaves its result records."""
    perf = node.config.stash[SESSION_KEY]
    if perf.xdist_dir is None:
        perf.xdist_dir = Path(tempfile.mkdtemp(prefix="mlxperf-xdist-"))
    node.workerinput[XDIST_DIR] = str(perf.xdist_dir)


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    perf = config.stash[SESSION_KEY]
    perf.close()
    records = [r.to_json() for r in perf.results]
    worker = getattr(config, "workerinput", None)
    if worker is not None and XDIST_DIR in worker:
        if records:
            write_json(Path(worker[XDIST_DIR]) / f"{worker['workerid']}.json", records)
        return
    if perf.xdist_dir is not None:
        for path in sorted(perf.xdist_dir.glob("*.json")):
            records.extend(json.loads(path.read_text(encoding="utf-8")))
        shutil.rmtree(perf.xdist_dir, ignore_errors=True)
    perf.records = records
    if perf.settings.json and records:
        write_json(
            Path(perf.settings.json), results_document(records, perf.fingerprint, perf.machine_id)
        )
