"""Progress of measurements: events from the protocol (in this process or over a worker's pipe),
ticks within a repetition from the real backends, their texts, and what pytest shows of them: a
plain line per repetition in a log, nothing under -q or from xdist workers, every step with -v."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_mlxperf import backends
from pytest_mlxperf.backends.worker import WorkerModel
from pytest_mlxperf.measuring.measure import Repetitions, measure
from pytest_mlxperf.measuring.progress import (
    MeasurementProgress,
    Progress,
    TerminalProgress,
    Tick,
    Ticker,
)
from pytest_mlxperf.measuring.workload import Workload
from tests.conftest import TINY_PERF_TEST, skip_below

pytestmark = pytest.mark.usefixtures("synth_cache")

REPETITION_LINE = re.compile(
    r"^mlxperf test_perf \[llamacpp:synth:tiny:pp16\+tg8\]: (confirmation 1/1, )?repetition "
    r"(\d)/(\d): [\d,]+ tokens, prompt [\d.]+ tok/s, generation [\d.]+ tok/s \([\d.]+ s\)$"
)


def test_repetitions_report_each_step_with_the_tokens_done_and_the_rate() -> None:
    events: list[Progress] = []
    results, _ = Repetitions(warmup=1, repetitions=2).run(
        lambda: 10, events.append, lambda result: (result, f"{result} tok/s")
    )
    assert results == [10, 10]
    assert [(e.phase, e.index, e.total, e.finished, e.tokens) for e in events] == [
        ("warm-up", 1, 1, False, 0),
        ("warm-up", 1, 1, True, 10),
        ("repetition", 1, 2, False, 0),
        ("repetition", 1, 2, True, 20),
        ("repetition", 2, 2, False, 0),
        ("repetition", 2, 2, True, 30),
    ]
    assert events[-1].describe() == "repetition 2/2: 30 tokens, 10 tok/s"
    assert events[-2].describe() == "repetition 2/2 ..."


class Recorder:
    def __init__(self) -> None:
        self.shown: list[tuple[str, bool, bool]] = []
        self.ended = 0

    def show(self, text: str, *, done: bool, essential: bool, tick: bool = False) -> None:
        self.shown.append((text, done, essential))

    def end(self) -> None:
        self.ended += 1


def test_a_measurement_says_which_test_and_stage_it_is_at() -> None:
    sink = Recorder()
    watch = MeasurementProgress(sink, "tests/test_x.py::test_y[mlx]", "mlx:m:pp8+tg4")
    watch.begin("confirmation 1/1")
    watch(Progress("repetition", 1, 5, True, 12, "prompt 1.0 tok/s"))
    watch.finish("done, regression")
    texts = [re.sub(r" \([\d.]+ s\)$", "", text) for text, _, _ in sink.shown]
    assert texts == [
        "mlxperf test_y[mlx] [mlx:m:pp8+tg4]: confirmation 1/1, measuring",
        "mlxperf test_y[mlx] [mlx:m:pp8+tg4]: confirmation 1/1, repetition 1/5: 12 tokens, "
        "prompt 1.0 tok/s",
        "mlxperf test_y[mlx] [mlx:m:pp8+tg4]: done, regression",
    ]
    assert [(done, essential) for _, done, essential in sink.shown] == [
        (False, False),
        (True, True),
        (True, False),
    ]
    assert sink.ended == 1


def _progress_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("mlxperf test_perf")]


def test_a_log_gets_one_plain_line_per_repetition(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=TINY_PERF_TEST)
    result = pytester.runpytest_subprocess("--mlxperf", "--mlxperf-repetitions", "3")
    result.assert_outcomes(passed=1)
    output = result.stdout.str()
    assert "\r" not in output and "\x1b" not in output  # not a terminal: no control characters
    lines = _progress_lines(output)
    assert [REPETITION_LINE.match(line).group(2, 3) for line in lines] == [  # type: ignore[union-attr]
        ("1", "3"),
        ("2", "3"),
        ("3", "3"),
    ]


def test_verbose_shows_every_step_and_quiet_none(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=TINY_PERF_TEST)
    args = ("--mlxperf", "--mlxperf-repetitions", "2", "--mlxperf-warmup", "1")
    verbose = _progress_lines(pytester.runpytest_subprocess(*args, "-v").stdout.str())
    steps = [line.split("]: ", 1)[1].split(" (")[0].split(":")[0] for line in verbose]
    assert steps == [
        "measuring",
        "warm-up 1/1 ...",
        "warm-up 1/1",
        "repetition 1/2 ...",
        "repetition 1/2",
        "repetition 2/2 ...",
        "repetition 2/2",
        "done, new",
    ]
    assert _progress_lines(pytester.runpytest_subprocess(*args, "-q").stdout.str()) == []


def test_xdist_workers_show_no_progress(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=TINY_PERF_TEST)
    result = pytester.runpytest_subprocess("--mlxperf", "-n", "1", "--mlxperf-repetitions", "2")
    result.assert_outcomes(passed=1)
    assert _progress_lines(result.stdout.str()) == []


def test_fine_tuning_in_a_worker_sends_its_progress_over_the_pipe(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("mlx_lm") is None:  # the worker imports it, not this process
        pytest.skip("mlx-lm is not installed")
    from pytest_mlxperf.backends.finetune import MIN_MLX_LM, FinetuneWorkload, make_dataset

    skip_below("mlx-lm", MIN_MLX_LM, "fine-tuning")

    data = make_dataset(tmp_path / "train.jsonl", n=4, tokens=40)
    workload = FinetuneWorkload(
        dataset=str(data), iterations=1, warmup_iterations=1, batch_size=2, max_seq_length=32
    )
    events: list[Progress] = []
    model = WorkerModel("mlx", "synth:tiny@4bit", None, timeout=300)
    try:
        measured = model.finetune(workload, 0, 2, progress=events.append)
    finally:
        model.close()
    assert len(measured.samples["iterations_per_s"]) == 2
    assert [(e.index, e.finished) for e in events] == [(1, False), (1, True), (2, False), (2, True)]
    assert "it/s" in events[-1].rate and events[-1].tokens > 0


class StubReporter:
    """The parts of pytest's terminal reporter that ``TerminalProgress`` uses."""

    def __init__(self) -> None:
        self.currentfspath: str | None = "test_suite.py"  # a line of results is open
        self.calls: list[tuple[str, str]] = []

    def ensure_newline(self) -> None:
        self.calls.append(("newline", ""))
        self.currentfspath = None

    def rewrite(self, line: str, erase: bool) -> None:
        self.calls.append(("rewrite", line))

    def write(self, text: str) -> None:
        self.calls.append(("write", text))

    def write_line(self, line: str) -> None:
        self.calls.append(("line", line))

    def flush(self) -> None:
        pass


def test_a_terminal_gets_one_live_line_per_measurement() -> None:
    reporter = StubReporter()
    sink = TerminalProgress(reporter, None, live=True, verbose=False)
    sink.show("a ...", done=False, essential=True)
    sink.show("a: done", done=True, essential=True)
    sink.end()  # "a: done" stays
    sink.show("b ...", done=False, essential=True)
    sink.show("x" * 1000, done=False, essential=False)
    assert reporter.calls[:5] == [
        ("newline", ""),  # off the line of test results
        ("rewrite", "a ..."),
        ("rewrite", "a: done"),
        ("write", "\n"),  # the next measurement starts below the last one's line
        ("rewrite", "b ..."),
    ]
    kind, last = reporter.calls[5]
    assert kind == "rewrite" and last.endswith("...") and len(last) < 1000  # one terminal line


def test_a_ticker_reports_at_most_once_per_interval_and_only_after_the_first() -> None:
    ticks: list[Tick] = []
    ticker = Ticker(ticks.append, every=1.0)
    t0 = ticker._next - 1.0  # when it was made
    stamps = [t0 + 0.5]
    ticker.generated(stamps, 10)  # within the first second: nothing
    stamps.append(t0 + 1.0)
    ticker.generated(stamps, 10)
    stamps.append(t0 + 1.5)
    ticker.generated(stamps, 10)  # half a second after the last tick: nothing
    stamps.append(t0 + 2.5)
    ticker.generated(stamps, 10)
    assert [(t.stage, t.done, t.total) for t in ticks] == [
        ("generating", 2, 10),
        ("generating", 4, 10),
    ]
    assert ticks[-1].rate == pytest.approx(3 / 2.0)  # the first token excluded, as generation_tps
    assert ticks[-1].describe() == "generating 4/10 tok, 1.5 tok/s"
    assert Tick("prompt", 12288, 32160).describe() == "prompt 12,288/32,160 tok"


# a long enough repetition in small chunks: several prompt chunks and generated tokens to tick
TICKING = Workload(prompt_tokens=96, generation_tokens=24, depth=32, prefill_step=16)


def _repetitions(events: list[Progress | Tick]) -> list[list[Tick]]:
    """The ticks of each repetition, checked to lie between its start and end."""
    reps: list[list[Tick]] = []
    running = False
    for event in events:
        if isinstance(event, Tick):
            assert running, f"a tick outside a repetition: {event}"
            reps[-1].append(event)
        else:
            running = not event.finished
            if running:
                reps.append([])
    return reps


def _check_ticks(ticks: list[Tick], workload: Workload) -> None:
    stages = [t.stage for t in ticks]
    assert stages == sorted(stages, key=["context", "prompt", "generating"].index)
    for stage, total in (
        ("context", workload.depth),
        ("prompt", workload.prompt_tokens),
        ("generating", workload.generation_tokens),
    ):
        done = [t.done for t in ticks if t.stage == stage]
        assert len(done) >= 2 and done == sorted(done) and done[-1] == total, (stage, done)
        assert {t.total for t in ticks if t.stage == stage} == {total}
    assert all(t.rate > 0 for t in ticks if t.stage == "generating" and t.done > 1)


@pytest.mark.parametrize("backend", ["llamacpp", "mlx"])
def test_ticks_reach_the_parent_from_an_isolated_worker_as_the_work_goes(backend: str) -> None:
    try:
        backends.check_available(backend)
    except backends.BackendUnavailable as exc:
        pytest.skip(str(exc))
    events: list[Progress | Tick] = []
    model = WorkerModel(backend, "synth:tiny", None, timeout=300)
    try:
        measure(model, TICKING, warmup=0, repetitions=2, progress=events.append, tick_every=0)
    finally:
        model.close()
    reps = _repetitions(events)
    assert len(reps) == 2
    for ticks in reps:
        _check_ticks(ticks, TICKING)


def test_ticks_show_within_their_repetition_live_and_sparingly_in_a_log() -> None:
    model = backends.load("llamacpp", "synth:tiny", None)
    live, log, log_every_tick = StubReporter(), StubReporter(), StubReporter()
    sinks = [
        TerminalProgress(live, None, live=True, verbose=False),
        TerminalProgress(log, None, live=False, verbose=False),
        TerminalProgress(log_every_tick, None, live=False, verbose=False, log_every=0),
    ]
    watches = [MeasurementProgress(sink, "t.py::test_x", "llamacpp:tiny") for sink in sinks]
    try:
        measure(
            model,
            TICKING,
            warmup=0,
            repetitions=2,
            progress=lambda event: [watch(event) for watch in watches],
            tick_every=0,
        )
    finally:
        model.close()
    shown = [text for kind, text in live.calls if kind == "rewrite"]
    steps = [text.split("]: ", 1)[1].rsplit(" (", 1)[0] for text in shown]
    assert "repetition 2/2: prompt 96/96 tok" in [s.rsplit(",", 1)[0] for s in steps]
    generating = [s for s in steps if s.startswith("repetition 1/2: generating ")]
    assert len(generating) >= 2 and generating[-1].startswith(
        "repetition 1/2: generating 24/24 tok"
    )
    # a log: one line per repetition; ticks only after LOG_EVERY seconds without a line
    assert [text.split("]: ", 1)[1][:16] for _, text in log.calls] == [
        "repetition 1/2: ",
        "repetition 2/2: ",
    ]
    tick = re.compile(r"repetition \d/2: (context|prompt|generating) \d+/\d+ tok")
    assert len([text for _, text in log_every_tick.calls if tick.search(text)]) >= 2
    assert not any(c in text for c in "\r\x1b" for _, text in log_every_tick.calls)


# a real repetition of about a second, long enough for several ticks, each in a log or not
TICKING_PERF_TEST = """
def test_perf(mlxperf):
    model = mlxperf.load("llamacpp", "synth:tiny")
    mlxperf.measure(model, prompt_tokens=512, generation_tokens=2048, prefill_step=64)
"""


def test_a_log_keeps_one_plain_line_per_repetition_while_ticks_run(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_suite=TICKING_PERF_TEST)
    result = pytester.runpytest_subprocess(
        "--mlxperf", "--mlxperf-repetitions", "2", "--mlxperf-warmup", "0"
    )
    result.assert_outcomes(passed=1)
    output = result.stdout.str()
    assert "\r" not in output and "\x1b" not in output
    lines = _progress_lines(output)
    assert [line.split("]: ", 1)[1].split(":")[0] for line in lines] == [
        "repetition 1/2",
        "repetition 2/2",
    ]
