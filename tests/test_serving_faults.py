"""Servers that fail: every fault a measurement can meet gives a ``ServerError`` whose message
names the server and says what happened. Real servers (``mlx_lm.server``, llama-cpp-python's)
on the project's synthetic models; faults a healthy server never shows are injected by a
proxy in front of the real one (``tests/faultproxy.py``)."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_mlxperf.serving.bench import ServeWorkload, measure_server
from pytest_mlxperf.serving.errors import ServerError
from pytest_mlxperf.serving.launch import free_port
from pytest_mlxperf.serving.server import (
    COMPLETIONS,
    MLX_SERVER_USAGE_FIXED,
    Server,
    connect,
    serve,
)
from tests.conftest import gone, skip_below
from tests.faultproxy import FaultProxy

MLX = ("mlx", "synth:tiny@4bit")
GGUF = ("llamacpp", "synth:tiny@Q4_K_M")
# 128 prompt tokens: mlx_lm.server reports the BOS and any first words a prompt shares with a
# cached one as cached_tokens; the synthetic tokenizer has only 11 single-token words
# 32 tokens: mlx_lm.server sends no event for a token that ends inside a UTF-8 character, so
# 8 tokens of the random model may come as 4 events, too few for a fault at event 4
ONE = ServeWorkload(prompt_tokens=128, generation_tokens=32, requests=1)


@pytest.fixture(scope="module")
def mlx_server(synth_cache: Path) -> Iterator[Server]:
    skip_below("mlx-lm", MLX_SERVER_USAGE_FIXED, "measuring mlx_lm.server")
    server = serve(*MLX, cache_dir=synth_cache, timeout=60)
    yield server
    server.close()


@pytest.fixture(scope="module")
def gguf_server(synth_cache: Path) -> Iterator[Server]:
    server = serve(*GGUF, cache_dir=synth_cache, timeout=60)
    yield server
    server.close()


def through(proxy: FaultProxy, server: Server, timeout: float = 30.0) -> Server:
    """The started ``server`` as seen through ``proxy``: its process (for a crash's
    diagnosis), EOS ids and tokenizer, the proxy's URL."""
    seen = Server(
        server.backend,
        proxy.url,
        None,
        server.identity,
        timeout,
        process=server.process,
        eos_ids=server.eos_ids,
        tokenizer=server.tokenizer,
    )
    # the same tokenizer: its single-token words, found once per module (mlx_lm.server has no
    # tokenize endpoint, and finding them takes ~30 completions)
    seen._single_words = server.single_token_words()
    return seen


def measure_once(server: Server) -> None:
    measure_server(server, ONE, warmup=0, repetitions=1)


def test_the_proxy_without_a_fault_changes_nothing(mlx_server: Server) -> None:
    with FaultProxy(mlx_server.url) as proxy:
        measurement = measure_server(through(proxy, mlx_server), ONE, warmup=0, repetitions=1)
        # mlx_lm.server sends no event for a token that ends inside a UTF-8 character, so the
        # events may be fewer than the tokens; usage counts every one
        assert proxy.events >= 2
    ((request,),) = [rep.requests for rep in measurement.raw]
    assert request.counted == "usage" and request.completion_tokens == ONE.generation_tokens
    assert measurement.samples["ttft"][0] > 0


def test_prompt_tokens_counted_by_usage_agree_with_the_model_tokenizer(
    mlx_server: Server,
) -> None:
    """A server without a tokenize endpoint, seen through connect(), is calibrated by the
    usage of one-token completions; it finds what the started model's own tokenizer says."""
    assert mlx_server.local_tokenizer is not None
    remote = connect(mlx_server.url, timeout=30)
    assert remote.local_tokenizer is None and remote.tokenizer is None
    assert remote.single_token_words() == mlx_server.single_token_words()
    prompt = remote.prompt(40)
    assert remote.count_tokens(prompt) == mlx_server.count_tokens(prompt) == 40


def test_connection_refused_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerError, match="cannot connect") as caught:
        connect(url, timeout=5)
    assert url in str(caught.value)
    assert "is the server running" in str(caught.value)


def kill_mid_stream(server: Server, words_from: Server) -> tuple[list[BaseException], str]:
    """SIGKILL ``server`` (started for this test) once a long stream through a proxy has sent
    its first event: what the request raised, and the proxy's URL."""
    server._single_words = words_from.single_token_words()  # the same model's tokenizer
    assert server.process is not None
    caught: list[BaseException] = []
    try:
        with FaultProxy(server.url) as proxy:
            seen = through(proxy, server)

            def long_request() -> None:
                body = seen.request_body(seen.prompt(32), 1500, stream=True)
                try:
                    seen.client.stream(COMPLETIONS, body)
                except BaseException as exc:
                    caught.append(exc)

            thread = threading.Thread(target=long_request)
            thread.start()
            deadline = time.monotonic() + 20
            while proxy.events < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert proxy.events >= 1, "the stream never started"
            os.kill(server.process.pid, signal.SIGKILL)
            thread.join(15)
            assert not thread.is_alive()
    finally:
        server.close()
    return caught, proxy.url


@pytest.mark.parametrize("backend", ["mlx", "llamacpp"])
def test_crash_mid_stream_says_the_server_died_and_its_signal(
    synth_cache: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """Either server; llama-cpp-python's (uvicorn) breaks its connections a moment before it
    can be reaped, mlx_lm.server's HTTP/1.0 stream may end as if cleanly."""
    source, running = (MLX, "mlx_server") if backend == "mlx" else (GGUF, "gguf_server")
    running_server = request.getfixturevalue(running)  # skips where that server is refused
    server = serve(*source, cache_dir=synth_cache, timeout=60)
    assert server.process is not None
    pid, name = server.process.pid, server.process.kind.name
    caught, proxy_url = kill_mid_stream(server, running_server)
    assert len(caught) == 1 and isinstance(caught[0], ServerError), caught
    message = str(caught[0])
    assert "the server died" in message
    assert f"{name} ({server.url}, pid {pid}) killed by signal 9" in message
    assert proxy_url in message  # the URL the request went to


def test_http_error_shows_the_status_and_body(gguf_server: Server) -> None:
    """The real server refuses a prompt beyond its context (2048) with HTTP 400 (a streamed
    request gets a 200 and an empty stream from llama-cpp-python instead)."""
    with pytest.raises(ServerError) as caught:
        gguf_server.complete(gguf_server.prompt(16) * 200, 8)
    message = str(caught.value)
    assert f"{gguf_server.url}/v1/completions answered HTTP 400" in message
    assert "maximum context length" in message  # the server's own words, from the body


def test_malformed_event_is_refused(mlx_server: Server) -> None:
    with (
        FaultProxy(mlx_server.url, "corrupt", at=3) as proxy,
        pytest.raises(ServerError, match=r"malformed stream event 3 from") as caught,
    ):
        measure_once(through(proxy, mlx_server))
    assert proxy.url in str(caught.value)
    assert '"tru' in str(caught.value)  # the event is shown


def test_connection_dropped_mid_stream(mlx_server: Server) -> None:
    with (
        FaultProxy(mlx_server.url, "close", at=4) as proxy,
        pytest.raises(ServerError, match=r"the connection broke after \d+ tokens") as caught,
    ):
        measure_once(through(proxy, mlx_server))
    assert proxy.url in str(caught.value)
    assert "the end of its log" in str(caught.value)


def test_ignored_max_tokens_is_refused(mlx_server: Server) -> None:
    with (
        FaultProxy(mlx_server.url, "more_tokens", at=5) as proxy,
        pytest.raises(ServerError) as caught,
    ):
        measure_once(through(proxy, mlx_server))
    message = str(caught.value)
    assert proxy.url in message
    assert "generated 37 tokens for max_tokens=32" in message
    assert "ignores max_tokens" in message


def test_a_stream_without_usage_is_counted_by_events_and_settled(mlx_server: Server) -> None:
    """Without usage, mlx_lm.server's events (it merges a token that ends inside a UTF-8
    character into the next) are fewer than its tokens: a plain request's usage settles it,
    instead of a false "stopped early"."""
    workload = ServeWorkload(prompt_tokens=128, generation_tokens=32, requests=4)
    with FaultProxy(mlx_server.url, "no_usage") as proxy:
        measurement = measure_server(through(proxy, mlx_server), workload, warmup=0, repetitions=2)
    records = [r for rep in measurement.raw for r in rep.requests]
    assert {r.counted for r in records} == {"events"}
    assert {r.completion_tokens for r in records} == {32}
    settled = [n for n in measurement.notes if n.startswith("the stream carried no usage")]
    assert len(settled) == 1
    merged = "merged tokens into fewer events" in settled[0]
    assert merged == any(len(r.t_events) < 32 for r in records)


def test_hang_is_bounded_by_the_timeout(mlx_server: Server) -> None:
    timeout = 2.0
    with FaultProxy(mlx_server.url, "hang", at=2) as proxy:
        seen = through(proxy, mlx_server, timeout=timeout)
        started = time.monotonic()
        with pytest.raises(ServerError, match=r"no answer within the 2 s timeout") as caught:
            measure_once(seen)
        took = time.monotonic() - started
    assert proxy.url in str(caught.value)
    assert took < timeout + 3, f"a {timeout} s timeout took {took:.1f} s"
    # a started server that stays up but fails a request: the end of its own log comes with
    # the error (its traceback, where a generation thread died), without our readiness polls
    log = mlx_server.process.log_path if mlx_server.process else None
    assert f"the end of its log ({log}):\n" in str(caught.value)
    assert "GET /health" not in str(caught.value)


@pytest.mark.parametrize("backend", ["mlx", "llamacpp"])
def test_server_that_fails_to_start(backend: str, tmp_path: Path) -> None:
    """Not a model: the server's own error from its log, within seconds, and no process."""
    if backend == "mlx":
        skip_below("mlx-lm", MLX_SERVER_USAGE_FIXED, "measuring mlx_lm.server")
        source = tmp_path / "not-a-model"
        source.mkdir()
        (source / "config.json").write_text('{"model_type": "llama"}')
        expected = "No safetensors found"
    else:
        source = tmp_path / "not-a-model.gguf"
        source.write_bytes(b"GGUF? no, just text\n" * 10)
        expected = "Failed to load model"
    started = time.monotonic()
    with pytest.raises(ServerError, match="server did not start") as caught:
        serve(backend, str(source), timeout=60)
    assert time.monotonic() - started < 30, "a server that cannot load waited for the timeout"
    message = str(caught.value)
    assert expected in message  # the end of the server's log
    assert "GET /health" not in message  # not the readiness polls' access log
    found = re.search(r"\(http://127\.0\.0\.1:\d+, pid (\d+)\)", message)
    assert found, message
    assert gone(int(found.group(1)), within=1.0), "the server process is left"
