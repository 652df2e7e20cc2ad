"""The serving package's pure parts, without a server: the stream parser on hand-written
server-sent events, the percentile thresholds, a repetition's metrics from synthetic request
records, workload validation, and the host kind of literal addresses."""

from __future__ import annotations

import json

import pytest

from pytest_mlxperf.backends import BackendUnavailable
from pytest_mlxperf.serving.bench import (
    PERCENTILE_MIN_TAIL,
    ServeWorkload,
    percentile_or_note,
    repetition_samples,
)
from pytest_mlxperf.serving.client import RequestRecord, StreamReader
from pytest_mlxperf.serving.errors import ServerError
from pytest_mlxperf.serving.server import check_server_available, host_kind

URL = "http://127.0.0.1:8080"


def event(text: str | None = "x", finish: str | None = None, **extra: object) -> str:
    choice = {"text": text, "index": 0, "finish_reason": finish}
    return "data: " + json.dumps({"choices": [choice], **extra})


def read(*lines: str) -> StreamReader:
    reader = StreamReader(URL, t_send=0.0)
    for line in lines:
        reader.line(line)
    return reader


def test_tokens_are_counted_from_events_without_usage() -> None:
    reader = read(
        ": keep-alive",
        "",
        event("a"),
        "",
        event(""),  # a token that ends inside a UTF-8 character: still a token
        "event: completion",
        "id: 7",
        event("b"),
        event("", "length"),  # finish without text: no token
        "data: [DONE]",
    )
    record = reader.record()
    assert record.completion_tokens == 3
    assert record.counted == "events"
    assert len(record.t_events) == 3
    assert record.prompt_tokens is None


def test_a_finish_event_with_text_carries_a_token() -> None:
    record = read(event("a"), event("b", "stop")).record()
    assert record.completion_tokens == 2  # no [DONE] needed once finished


def test_usage_only_event_is_the_count_and_carries_no_token() -> None:
    usage = {
        "prompt_tokens": 16,
        "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 2},
    }
    record = read(
        event("a"),
        event("b"),
        event(None, "length"),
        "data: " + json.dumps({"choices": [], "usage": usage}),
        "data: [DONE]",
    ).record()
    assert len(record.t_events) == 2
    assert record.completion_tokens == 5  # the server's count wins (held-back UTF-8)
    assert record.counted == "usage"
    assert (record.prompt_tokens, record.cached_tokens) == (16, 2)


def test_chat_deltas_and_server_timings() -> None:
    chat = "data: " + json.dumps({"choices": [{"delta": {"content": "hi"}, "finish_reason": None}]})
    timings = {"prompt_per_second": 100.0, "predicted_per_second": 50, "note": "x"}
    record = read(chat, event("", "length", timings=timings), "data: [DONE]").record()
    assert record.completion_tokens == 1
    assert record.server_timings == {"prompt_per_second": 100.0, "predicted_per_second": 50.0}


def test_a_stream_without_finish_or_done_is_refused() -> None:
    with pytest.raises(ServerError, match=r"ended after 2 tokens without a finish_reason") as e:
        read(event("a"), event("b")).record()
    assert URL in str(e.value)


def test_a_stream_without_tokens_is_refused() -> None:
    with pytest.raises(ServerError, match="without sending any token"):
        read(event("", "length"), "data: [DONE]").record()


def test_an_error_event_is_shown() -> None:
    with pytest.raises(ServerError, match=r"sent an error event: .*out of memory") as e:
        read(event("a"), 'data: {"error": {"message": "out of memory"}}')
    assert URL in str(e.value)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ('{"choices": [{"text": "tru', "Unterminated string|Expecting"),
        ("[1, 2]", "not a JSON object"),
        ('{"object": "text_completion"}', "no 'choices' list"),
        ('{"choices": ["text"]}', "a choice is not an object"),
    ],
)
def test_malformed_events_are_refused_with_their_number(data: str, why: str) -> None:
    with pytest.raises(ServerError, match=rf"malformed stream event 2 from {URL}: ({why})"):
        read(event("a"), "data: " + data)


def test_percentile_thresholds() -> None:
    # p50 needs 10 gaps, p95 100, p99 500: PERCENTILE_MIN_TAIL beyond the percentile
    assert PERCENTILE_MIN_TAIL == 5
    for name, needed in (("itl_p50", 10), ("itl_p95", 100), ("itl_p99", 500)):
        value, note = percentile_or_note([0.01] * (needed - 1), name)
        assert value is None
        assert note is not None and f"needs {needed}" in note and name in note
        value, note = percentile_or_note([0.01] * needed, name)
        assert value == pytest.approx(0.01) and note is None
    gaps = [i / 1000 for i in range(1, 101)]
    assert percentile_or_note(gaps, "itl_p95")[0] == pytest.approx(0.09505)


def record(
    t_send: float, events: list[float], tokens: int | None = None, **kw: object
) -> RequestRecord:
    return RequestRecord(
        t_send=t_send,
        t_events=events,
        t_end=events[-1] + 0.01,
        completion_tokens=len(events) if tokens is None else tokens,
        counted="events",
        **kw,  # type: ignore[arg-type]
    )


def test_repetition_samples_medians_and_throughput() -> None:
    records = [
        record(0.0, [0.1, 0.2, 0.3]),  # ttft 0.1, 2 tokens after the first in 0.2 s
        record(0.0, [0.2, 0.25, 0.3]),  # ttft 0.2, in 0.1 s
        record(1.0, [1.4, 1.8, 2.2]),  # ttft 0.4, in 0.8 s
    ]
    samples, notes = repetition_samples(records, wall=3.0, prompt_tokens=10)
    assert samples["ttft"] == pytest.approx(0.2)
    assert samples["prompt_tps"] == pytest.approx(10 / 0.2)
    assert samples["generation_tps"] == pytest.approx(10.0)  # of 10, 20, 2.5
    assert samples["e2e_latency"] == pytest.approx(0.31)
    assert samples["throughput_tps"] == pytest.approx(9 / 3.0)
    assert "itl_p50" not in samples  # 6 gaps, p50 needs 10
    assert set(notes) == {"itl_p50", "itl_p95", "itl_p99"}
    assert all(n.startswith(f"{name} not measured") for name, n in notes.items())
    assert "server_prompt_tps" not in samples


def test_repetition_samples_count_usage_and_report_server_timings() -> None:
    events = [0.1 + i * 0.01 for i in range(12)]  # 11 gaps: p50 measured
    timings = {"prompt_per_second": 500.0, "predicted_per_second": 80.0}
    records = [
        record(0.0, events, tokens=13, server_timings=timings),
        record(0.0, events, tokens=13, server_timings={**timings, "prompt_per_second": 700.0}),
    ]
    samples, notes = repetition_samples(records, wall=2.0, prompt_tokens=8)
    assert samples["throughput_tps"] == pytest.approx(26 / 2.0)  # usage counts, not events
    assert samples["generation_tps"] == pytest.approx(12 / 0.11)
    assert samples["itl_p50"] == pytest.approx(0.01)
    assert samples["server_prompt_tps"] == pytest.approx(600.0)
    assert samples["server_generation_tps"] == pytest.approx(80.0)
    assert set(notes) == {"itl_p95", "itl_p99"}


def test_server_timings_only_when_every_request_has_them() -> None:
    timed = record(0.0, [0.1, 0.2], server_timings={"prompt_per_second": 1.0})
    samples, _ = repetition_samples([timed, record(0.0, [0.1, 0.2])], wall=1.0, prompt_tokens=4)
    assert "server_prompt_tps" not in samples


def test_a_single_token_request_has_no_generation_speed() -> None:
    samples, _ = repetition_samples([record(0.0, [0.1])], wall=1.0, prompt_tokens=4)
    assert "generation_tps" not in samples and samples["ttft"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"prompt_tokens": 0}, r"prompt_tokens must be >= 1 \(got 0\)"),
        ({"generation_tokens": 1}, r"generation_tokens must be >= 2"),
        ({"concurrency": 0}, r"concurrency must be >= 1"),
        ({"requests": 2, "concurrency": 4}, r"requests \(2\) must be >= concurrency \(4\)"),
    ],
)
def test_workload_validation(fields: dict[str, int], problem: str) -> None:
    with pytest.raises(ValueError, match="invalid server workload: .*" + problem):
        ServeWorkload(**fields)


def test_workload_reports_every_problem_and_labels_itself() -> None:
    with pytest.raises(ValueError) as caught:
        ServeWorkload(prompt_tokens=0, generation_tokens=0, requests=0)
    assert str(caught.value).count(";") == 3  # four problems, all named
    label = ServeWorkload(prompt_tokens=16, generation_tokens=8, concurrency=2, requests=4).label
    assert label == "pp16+tg8 x4 c2"


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1:8080", "loopback"),
        ("http://localhost:11434/v1", "loopback"),
        ("http://[::1]:8080", "loopback"),
        ("http://10.1.2.3:8080", "private"),
        ("http://192.168.0.5", "private"),
        ("https://8.8.8.8", "public"),
    ],
)
def test_host_kind(url: str, kind: str) -> None:
    assert host_kind(url) == kind


@pytest.mark.parametrize(
    ("mlx_lm", "measured"),
    [("0.26.4", False), ("0.28.3", False), ("0.28.4", True), ("0.32.2", True)],
)
def test_an_mlx_server_whose_usage_is_wrong_is_not_measured(mlx_lm: str, measured: bool) -> None:
    """mlx_lm.server before 0.28.4 counts a streamed prompt's cached part twice: skipped, with
    the version and the fix named; the llama.cpp server does not depend on mlx-lm."""
    check_server_available("llamacpp", {"mlx-lm": mlx_lm})
    if measured:
        check_server_available("mlx", {"mlx-lm": mlx_lm})
        return
    with pytest.raises(BackendUnavailable, match=rf"mlx-lm {mlx_lm} reports wrong token counts"):
        check_server_available("mlx", {"mlx-lm": mlx_lm})
