"""A server started by the ``mlxperf`` fixture lives exactly as long as it should: shared by the
tests of a session, restarted after a crash, and gone when the session ends however it ends
(passed, failed, Ctrl-C, or pytest killed). Real pytest subprocesses, real servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from pytest_mlxperf.serving.server import MLX_SERVER_USAGE_FIXED
from tests.conftest import REPO, below_minimum, gone
from tests.test_e2e import scale

pytestmark = [
    pytest.mark.usefixtures("synth_cache"),
    pytest.mark.skipif(
        below_minimum("mlx-lm", MLX_SERVER_USAGE_FIXED) is not None,
        reason=f"these sessions measure mlx_lm.server, from mlx-lm {MLX_SERVER_USAGE_FIXED} on",
    ),
]

RECORD = """
import os
import signal
import time
from pathlib import Path

MLX = ("mlx", "synth:tiny@4bit")


def record(mlxperf):
    server = mlxperf.serve(*MLX)
    with Path("servers.txt").open("a") as out:
        out.write(f"{server.process.pid} {server.url}\\n")
    return server
"""


def run(
    pytester: pytest.Pytester, body: str, *args: str
) -> tuple[pytest.RunResult, list[tuple[int, str]]]:
    pytester.makepyfile(test_served=RECORD + body)
    servers = pytester.path / "servers.txt"
    servers.unlink(missing_ok=True)
    result = pytester.runpytest_subprocess(
        "--mlxperf", "-p", "no:cacheprovider", "--mlxperf-baselines-dir", "bl", *args
    )
    lines = servers.read_text().split("\n")
    return result, [(int(pid), url) for pid, url in (ln.split() for ln in lines if ln)]


def test_a_server_is_shared_by_the_session_and_stopped_at_its_end(
    pytester: pytest.Pytester,
) -> None:
    result, servers = run(
        pytester,
        """
def test_one(mlxperf):
    assert record(mlxperf).complete(" the the the", 4)

def test_two(mlxperf):
    record(mlxperf)
""",
    )
    result.assert_outcomes(passed=2)
    (pid, url), second = servers
    assert second == (pid, url)  # one server, reused
    assert gone(pid)


def test_a_failing_test_does_not_leave_its_server(pytester: pytest.Pytester) -> None:
    result, servers = run(
        pytester,
        """
def test_fails(mlxperf):
    record(mlxperf)
    assert False, "a failure after the server started"
""",
    )
    result.assert_outcomes(failed=1)
    ((pid, _),) = servers
    assert gone(pid)


def test_ctrl_c_does_not_leave_the_server(pytester: pytest.Pytester) -> None:
    result, servers = run(
        pytester,
        """
def test_interrupted(mlxperf):
    record(mlxperf)
    raise KeyboardInterrupt

def test_never_runs(mlxperf):
    record(mlxperf)
""",
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED
    ((pid, _),) = servers  # the second test never ran
    assert gone(pid)


def test_a_crashed_server_is_started_again_for_the_next_test(pytester: pytest.Pytester) -> None:
    result, servers = run(
        pytester,
        """
def test_crash(mlxperf):
    server = record(mlxperf)
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.process.wait(5)

def test_after(mlxperf):
    assert record(mlxperf).complete(" the the the", 4)
""",
    )
    result.assert_outcomes(passed=2)
    (first, first_url), (second, second_url) = servers
    assert second != first and second_url != first_url
    assert gone(second)


def test_a_regression_is_confirmed_in_a_fresh_server_process(pytester: pytest.Pytester) -> None:
    """Processes differ more than repetitions: a suspected regression of a server measurement
    is re-taken in a new server process, and so is a timed pipeline's, whose ``Server``
    object follows the new process (new port) without the test doing anything."""
    body = """
def test_served(mlxperf):
    server = record(mlxperf)
    mlxperf.measure(server, prompt_tokens=16, generation_tokens=8, requests=1)
    record(mlxperf)

def test_pipeline(mlxperf):
    server = record(mlxperf)
    mlxperf.time(lambda: server.complete(" the the the", 4), name="pipeline")
    record(mlxperf)
"""
    saved, servers = run(pytester, body, "--mlxperf-save-baselines")
    saved.assert_outcomes(passed=2)
    assert len({pid for pid, _ in servers}) == 1  # nothing to confirm: one server throughout
    baseline = pytester.path / "bl" / "test_served.json"
    scale(baseline, "mlx-server:synth:tiny@4bit", "ttft", 0.1)
    scale(baseline, "call:pipeline", "duration", 0.1)
    caught, servers = run(pytester, body, "-rf")
    caught.assert_outcomes(failed=2)
    caught.stdout.fnmatch_lines(["*confirmed by re-measurement 1 of 1*"] * 2)
    (first, _), (measured_again, _), (piped, _), (timed_again, url) = servers
    assert first != measured_again and piped == measured_again and timed_again != piped
    assert url != servers[0][1]
    assert all(gone(pid) for pid, _ in servers)


def test_through_the_fixture_a_refused_connection_is_one_clear_line(
    pytester: pytest.Pytester,
) -> None:
    from pytest_mlxperf.serving.launch import free_port

    url = f"http://127.0.0.1:{free_port()}"
    pytester.makepyfile(
        test_connect=f"""
def test_remote(mlxperf):
    mlxperf.connect("{url}")
"""
    )
    result = pytester.runpytest_subprocess("--mlxperf", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*cannot connect to {url} (*is the server running*"])
    assert "Traceback" not in result.stdout.str()
    assert "serving/client.py" not in result.stdout.str()  # no plugin traceback


CHILD = """
import sys, threading, time
from pytest_mlxperf.serving.server import COMPLETIONS, serve

server = serve(sys.argv[1], sys.argv[2], timeout=60)
if sys.argv[3] == "streaming":  # a request in flight that nobody will read to its end
    body = server.request_body(server.prompt(16), 100000, stream=True)
    threading.Thread(target=server.client.stream, args=(COMPLETIONS, body), daemon=True).start()
    time.sleep(1.0)
print(server.process.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize(
    ("backend", "source", "mode"),
    [
        ("mlx", "synth:tiny@4bit", "idle"),
        # uvicorn takes SIGTERM as a graceful shutdown that waits for the stream in flight
        ("llamacpp", "synth:tiny@Q4_K_M", "streaming"),
    ],
)
def test_a_killed_parent_leaves_no_server(backend: str, source: str, mode: str) -> None:
    """Linux: the server gets the parent-death signal when the process that started it is
    SIGKILLed (no atexit, no session end)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux's")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, backend, source, mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        pid = int(child.stdout.readline())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    survived = not gone(pid)
    if survived:
        os.kill(pid, signal.SIGKILL)  # not left behind by a failing test
    assert not survived, f"server {pid} outlived its killed parent"
