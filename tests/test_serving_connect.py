"""Servers the user starts themselves, reached with ``connect``: a connected server that says
it is llama-cpp-python's is held to what is known of that program, as a started one is (it
may run past ``max_tokens`` to finish a multi-byte character: counted and noted, not
refused), and its identity names the program."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pytest_mlxperf.backends import check_repack
from pytest_mlxperf.backends.sources import resolve
from pytest_mlxperf.serving.launch import SERVER_KINDS, free_port
from pytest_mlxperf.serving.server import TOKENIZERS, recognize
from tests.conftest import gone

# llama-cpp-python overshoots in about 3 of 100 requests of the random synthetic model
# (measured: 8 of 300 at tg4, 9 of 200 at tg16); 5 x 80 timed requests all fitting max_tokens
# would be a chance of about 1 in 10^5
MEASURED = """
def test_my_server(mlxperf):
    server = mlxperf.connect("{url}")
    mlxperf.measure(server, prompt_tokens=8, generation_tokens=4, requests=80)
"""


@pytest.fixture(scope="module")
def users_llamacpp_server(
    synth_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """llama-cpp-python's server on the tiny GGUF, started the way a user starts it (not by
    the plugin), always stopped and reaped afterwards: its URL. Module-scoped, so that the
    model is built (numpy, gguf imported) before ``pytester`` snapshots ``sys.modules``: its
    teardown would drop them, and numpy cannot be imported twice in one process."""
    model = resolve("llamacpp", "synth:tiny", synth_cache).path
    url = f"http://127.0.0.1:{free_port()}"
    # the same server with repacking off where the suite runs llama.cpp so (conftest: llama.cpp's
    # defaults crash on this machine); it is llama_cpp.server's own __main__ either way
    no_repack = check_repack("llamacpp", None) is False
    command = [
        sys.executable,
        "-m",
        SERVER_KINDS["llamacpp"].no_repack_module if no_repack else "llama_cpp.server",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        url.rsplit(":", 1)[1],
        "--n_threads",
        "1",
        "--n_threads_batch",
        "1",
    ]
    log = tmp_path_factory.mktemp("users-server") / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"the server exited: {log.read_text()[-2000:]}"
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not ready in 60 s: {log.read_text()[-2000:]}"
            time.sleep(0.1)
        yield url
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        assert gone(process.pid)


def test_a_connected_llamacpp_server_runs_past_max_tokens_counted_and_noted(
    pytester: pytest.Pytester, users_llamacpp_server: str
) -> None:
    pytester.makepyfile(test_my_server=MEASURED.format(url=users_llamacpp_server))
    result = pytester.runpytest_subprocess("--mlxperf", "--mlxperf-json", "r.json")
    result.assert_outcomes(passed=1)
    (record,) = json.loads((pytester.path / "r.json").read_text())["results"]
    assert record["backend"] == "remote"
    assert record["model"]["server"] == "llama_cpp.server"  # recognized, not "uvicorn"
    counts = [r["completion_tokens"] for rep in record["raw"] for r in rep["requests"]]
    assert len(counts) == 5 * 80 and min(counts) == 4
    assert max(counts) > 4, "no request ran past max_tokens: the overshoot was not exercised"
    assert f"the server generated up to {max(counts)} tokens for max_tokens=4" in " ".join(
        record["notes"]
    )


def test_recognized_from_its_tokenize_endpoint_and_model_list() -> None:
    llama_cpp_python, llama_server = TOKENIZERS
    entry = {"id": "tiny.gguf", "object": "model", "owned_by": "me", "permissions": []}
    assert recognize(entry, llama_cpp_python) is SERVER_KINDS["llamacpp"]
    assert SERVER_KINDS["llamacpp"].overshoots
    # llama.cpp's llama-server stops at n_predict; ollama and mlx_lm.server have no tokenizer
    assert recognize({"id": "tiny.gguf", "owned_by": "llamacpp"}, llama_server) is None
    assert recognize({"id": "m", "owned_by": "me"}, None) is None
    assert recognize({"id": "m", "owned_by": "library"}, llama_cpp_python) is None
