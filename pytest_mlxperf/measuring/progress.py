"""Progress of long measurements: what a measurement is doing now, said as it happens.

A 32K-token prompt on a real model takes minutes per repetition; a silent terminal until the
test ends looks like a hang. The protocol (``measure.Repetitions``) reports a ``Progress`` event
before and after every warm-up and timed repetition; within a repetition, the backend reports
``Tick`` events as it prefills the prompt and generates tokens, throttled where the work
happens (``Ticker``) so that the timed loop pays one comparison per token. A measurement that
runs inside an isolated worker sends its events over the worker's pipe (``worker.WorkerModel``).
The session gives each event its context (the test, the measurement, a confirmation, the
repetition, the elapsed time) and hands the text to a ``ProgressSink``: the pytest plugin's
``TerminalProgress`` shows it as one live status line on a terminal, and as one plain line per
finished repetition in a log (CI), without control characters.

Nothing here imports pytest: ``TerminalProgress`` is given pytest's terminal reporter and
capture manager by the plugin.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Progress:
    """One step of a measurement starting (``finished`` False) or done (True): the ``index``-th
    of ``total`` steps of ``phase`` ("warm-up" or "repetition"); for a finished step, the tokens
    processed so far by the measurement's finished steps and the step's speed (``rate``)."""

    phase: str
    index: int
    total: int
    finished: bool
    tokens: int = 0
    rate: str = ""

    @property
    def step(self) -> str:
        """``repetition 3/5``."""
        return f"{self.phase} {self.index}/{self.total}"

    def describe(self) -> str:
        """``repetition 3/5 ...`` while it runs, ``repetition 3/5: 576 tokens, prompt 354.6
        tok/s, generation 186.0 tok/s`` when done (tokens: all finished steps' so far)."""
        step = self.step
        if not self.finished:
            return f"{step} ..."
        details = [f"{self.tokens:,} tokens"] if self.tokens else []
        details += [self.rate] if self.rate else []
        return ": ".join([step, ", ".join(details)]) if details else f"{step} done"


TICK_EVERY = 0.25  # seconds between ticks within a repetition, at most
LOG_EVERY = 30.0  # seconds of silence in a log before a tick gets a line there


@dataclass(frozen=True)
class Tick:
    """Work done so far within the repetition that runs: ``done`` of ``total`` tokens of
    ``stage`` ("context": the untimed context depth, "prompt", "generating"), at ``rate``
    tokens/s since the stage began (0 before it can be known)."""

    stage: str
    done: int
    total: int
    rate: float = 0.0

    def describe(self) -> str:
        """``prompt 12,288/32,160 tok, 590.3 tok/s``."""
        text = f"{self.stage} {self.done:,}/{self.total:,} tok"
        return f"{text}, {self.rate:.1f} tok/s" if self.rate else text


ProgressFn = Callable[[Progress | Tick], None]
TickFn = Callable[[Tick], None]


class Ticker:
    """In-repetition progress, throttled where the work happens: a backend calls ``prefilled``
    after each chunk of a prefill and ``generated`` after each token, and at most one ``Tick``
    every ``every`` seconds (the first one ``every`` seconds after the ticker was made, so a
    short repetition has none) goes to ``report``. A call that reports nothing costs a method
    call and one comparison, so it can sit in a timed loop; one made per repetition."""

    def __init__(self, report: TickFn, every: float = TICK_EVERY) -> None:
        self.report = report
        self.every = every
        self._next = time.perf_counter() + every

    def prefilled(self, stage: str, done: int, total: int, since: float) -> None:
        """``done`` of ``total`` tokens of ``stage`` are in the KV cache, processed since the
        ``time.perf_counter`` time ``since``."""
        now = time.perf_counter()
        if now < self._next:
            return
        self._next = now + self.every
        self.report(Tick(stage, done, total, done / (now - since) if now > since else 0.0))

    def generated(self, stamps: list[float], total: int) -> None:
        """Tokens were generated at the ``time.perf_counter`` times ``stamps`` (the backend's
        own timestamps: no clock read here), of ``total``; the rate is steady decode, the
        first token excluded (as ``generation_tps``)."""
        now = stamps[-1]
        if now < self._next:
            return
        self._next = now + self.every
        done = len(stamps)
        rate = (done - 1) / (now - stamps[0]) if done > 1 else 0.0
        self.report(Tick("generating", done, total, rate))


class ProgressSink(Protocol):
    """Where progress texts go (the plugin's terminal output; a list in tests)."""

    def show(self, text: str, *, done: bool, essential: bool, tick: bool = False) -> None:
        """``text`` says what runs now (``done`` False: a status the next one replaces) or
        what just finished (``done`` True); ``essential`` steps (timed repetitions) are the
        ones a log gets a line for by default; a ``tick`` is progress within a repetition,
        several a second."""

    def end(self) -> None:
        """The measurement is over: its last text stays, the next one starts afresh."""


class TerminalProgress:
    """``ProgressSink`` on pytest's terminal: a live status line (rewritten in place, ticks
    included) on a terminal; on anything else (a CI log) one plain line per finished timed
    repetition, and per every step with ``-v``. A log gets a tick only after ``log_every``
    seconds without a line: a repetition of minutes then still says how far it got (and a CI
    that stops a job silent for 10 minutes lets it run), while the usual log, of repetitions
    shorter than that, keeps its one line per repetition. Writes pass by pytest's output
    capture, as its live logging does. The plugin makes none under ``-q`` and in xdist
    workers, whose output nobody sees."""

    def __init__(
        self,
        reporter: Any,
        capture: Any,
        *,
        live: bool,
        verbose: bool,
        log_every: float = LOG_EVERY,
    ) -> None:
        self.reporter = reporter
        self.capture = capture
        self.live = live
        self.verbose = verbose
        self.log_every = log_every
        self._last_line = time.monotonic()  # when a log last got a line
        self._line_open = False  # a live status is on the current line, being rewritten
        self._line_kept = False  # a finished measurement's last status ends the output

    def _uncaptured(self) -> Any:
        if self.capture is None:
            return contextlib.nullcontext()
        return self.capture.global_and_fixture_disabled()

    def show(self, text: str, *, done: bool, essential: bool, tick: bool = False) -> None:
        with self._uncaptured():
            if not self.live:
                now = time.monotonic()
                if tick:
                    wanted = now - self._last_line >= self.log_every
                else:
                    wanted = self.verbose or (done and essential)
                if wanted:
                    self.reporter.write_line(text)
                    self._last_line = now
                return
            if not self._line_open:
                if self.reporter.currentfspath:
                    self.reporter.ensure_newline()  # leave the line of test results as it is
                elif self._line_kept:
                    self.reporter.write("\n")  # and the status a measurement ended with
                self._line_open, self._line_kept = True, False
            width = shutil.get_terminal_size().columns - 1
            line = text if len(text) <= width else text[: width - 3] + "..."
            self.reporter.rewrite(line, erase=True)
            self.reporter.flush()

    def end(self) -> None:
        # the last status stays on its line; pytest's next output starts a new one
        self._line_open, self._line_kept = False, self._line_open


class MeasurementProgress:
    """The progress of one measurement of one test, as texts for a ``ProgressSink``:
    ``mlxperf test_decode[mlx] [mlx:synth:tiny:pp128+tg64]: repetition 3/5 done: ... (4.2 s)``,
    with the stage ("confirmation 1/1") when the measurement is being re-taken."""

    def __init__(self, sink: ProgressSink, nodeid: str, key: str) -> None:
        self.sink = sink
        self.title = f"mlxperf {nodeid.split('::', 1)[-1]} [{key}]"
        self.stage = ""
        self.step = ""  # the step that runs, which a tick is part of
        self.started = time.monotonic()

    def _show(self, text: str, *, done: bool, essential: bool, tick: bool = False) -> None:
        elapsed = time.monotonic() - self.started
        prefix = f"{self.stage}, " if self.stage else ""
        self.sink.show(
            f"{self.title}: {prefix}{text} ({elapsed:.1f} s)",
            done=done,
            essential=essential,
            tick=tick,
        )

    def __call__(self, event: Progress | Tick) -> None:
        if isinstance(event, Tick):
            text = f"{self.step}: {event.describe()}" if self.step else event.describe()
            self._show(text, done=False, essential=False, tick=True)
            return
        self.step = "" if event.finished else event.step
        self._show(event.describe(), done=event.finished, essential=event.phase == "repetition")

    def begin(self, stage: str = "") -> None:
        """A (re-)measurement starts; ``stage`` names a re-take, e.g. "confirmation 1/1"."""
        self.stage = stage
        self._show("measuring", done=False, essential=False)

    def finish(self, text: str) -> None:
        """The measurement is over: ``text`` says how it went."""
        self.stage = ""
        self._show(text, done=True, essential=False)
        self.sink.end()
