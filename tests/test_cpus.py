"""``--mlxperf-cpus``: which cores a worker or started server gets, refused where it cannot be
had (platform facts injected), and real processes confined to them, every thread included."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pytest_mlxperf.host import cpus
from pytest_mlxperf.measuring.measure import measure
from pytest_mlxperf.measuring.workload import Workload
from pytest_mlxperf.serving.server import MLX_SERVER_USAGE_FIXED
from pytest_mlxperf.session import PerfSession
from pytest_mlxperf.settings.config import Settings
from pytest_mlxperf.settings.options import parse_cpus
from tests.conftest import skip_below

LINUX = sys.platform.startswith("linux")


def test_choose_takes_the_first_cores_and_refuses_what_cannot_be_had() -> None:
    assert cpus.choose(None, frozenset({0, 1})) is None
    assert cpus.choose(None, None) is None  # no restriction asked: fine anywhere
    assert cpus.choose(1, frozenset({3, 1, 2})) == frozenset({1})
    assert cpus.choose(2, frozenset({3, 1, 2})) == frozenset({1, 2})
    with pytest.raises(ValueError, match=r"--mlxperf-cpus 3: this process may run on 2 cores"):
        cpus.choose(3, frozenset({0, 1}))
    with pytest.raises(ValueError, match=r"cannot confine a process to cores \(Linux only\)"):
        cpus.choose(1, None)  # macOS: no CPU affinity


@pytest.mark.parametrize(("text", "value"), [("all", None), (" ALL ", None), ("2", 2)])
def test_parse_cpus(text: str, value: int | None) -> None:
    assert parse_cpus(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "half", ""])
def test_parse_cpus_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="expected 'all' or a whole number of cores >= 1"):
        parse_cpus(text)


def test_the_session_refuses_cores_it_cannot_honour(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--mlxperf-isolate is off: there are none"):
        PerfSession(Settings(cpus=1, isolate=False), tmp_path, available_cpus=frozenset({0}))
    with pytest.raises(ValueError, match="may run on 1 cores"):
        PerfSession(Settings(cpus=2), tmp_path, available_cpus=frozenset({0}))
    session = PerfSession(Settings(cpus=1), tmp_path, available_cpus=frozenset({4, 5}))
    assert session.cpus == frozenset({4})
    assert PerfSession(Settings(), tmp_path, available_cpus=frozenset({4, 5})).cpus is None


def test_a_bad_count_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--mlxperf", "--mlxperf-cpus", "4096")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*pytest-mlxperf: --mlxperf-cpus 4096: this process may run on*"])


def threads_cores(pid: int) -> set[frozenset[int]]:
    """The cores of every thread of process ``pid``."""
    tasks = Path(f"/proc/{pid}/task")
    return {frozenset(os.sched_getaffinity(int(t.name))) for t in tasks.iterdir()}


@pytest.mark.skipif(not LINUX, reason="CPU affinity is Linux's")
@pytest.mark.usefixtures("synth_cache")
def test_a_worker_and_a_server_run_on_their_cores_only(tmp_path: Path) -> None:
    """Real processes: an MLX worker (whose backend starts threads after it took its core) and
    a started mlx_lm.server; the count is in their identities, so results on fewer cores are
    never compared with results on all."""
    skip_below("mlx-lm", MLX_SERVER_USAGE_FIXED, "measuring mlx_lm.server")
    session = PerfSession(Settings(cpus=1, confirm=0), tmp_path)
    (core,) = session.cpus
    try:
        model = session.load("mlx", "synth:tiny@4bit")
        measure(model, Workload(prompt_tokens=16, generation_tokens=4), warmup=0, repetitions=1)
        assert model.pid is not None and threads_cores(model.pid) == {frozenset({core})}
        assert model.identity["cpus"] == 1
        server = session.serve("mlx", "synth:tiny@4bit")
        assert server.complete(" the the the", 4)
        assert server.process is not None
        assert threads_cores(server.process.pid) == {frozenset({core})}
        assert server.identity["cpus"] == 1
    finally:
        session.close()


def test_a_confined_llamacpp_server_gets_no_more_threads_than_cores() -> None:
    from pytest_mlxperf.serving.launch import SERVER_KINDS

    args = SERVER_KINDS["llamacpp"].default_args(frozenset({5}))
    assert args[args.index("--n_threads") + 1] == args[args.index("--n_threads_batch") + 1] == "1"
    assert SERVER_KINDS["mlx"].default_args(frozenset({5})) == ()
