"""A server measurement: a workload of streamed requests at a concurrency, repeated like any
measurement (``measure.Repetitions``), and the metrics of each repetition.

Per repetition, ``requests`` requests go out through ``concurrency`` workers (a closed loop: a
worker sends its next request when its last one ends). Each request has its own exact-length
prompt and must stream exactly ``generation_tokens`` tokens. The samples of one repetition:

- ``ttft``, ``prompt_tps`` (prompt tokens / TTFT), ``generation_tps`` ((tokens - 1) / (last
  token event - first), per request) and ``e2e_latency``: medians over the repetition's
  requests; TTFT counts from the request being sent, so it includes HTTP and any queueing;
- ``itl_p50``/``itl_p95``/``itl_p99``: percentiles of every gap between token events of the
  repetition, each only when there are enough gaps for it to be more than the largest few
  (``PERCENTILE_MIN_TAIL`` gaps beyond it), otherwise left out with a note;
- ``throughput_tps``: all tokens generated / the repetition's wall time;
- ``process_peak_memory``: the started server process's peak in the repetition;
- ``server_prompt_tps``/``server_generation_tps``: what the server itself reports, where it
  does (llama.cpp's server ``timings``), reported beside ours and not gated.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, fields
from typing import Any

from pytest_mlxperf.host import memory
from pytest_mlxperf.measuring.base import Measurement
from pytest_mlxperf.measuring.measure import Repetitions
from pytest_mlxperf.measuring.progress import ProgressFn
from pytest_mlxperf.serving.client import RequestRecord
from pytest_mlxperf.serving.errors import ServerError
from pytest_mlxperf.serving.server import COMPLETIONS, Server

PERCENTILES = {"itl_p50": 0.50, "itl_p95": 0.95, "itl_p99": 0.99}
# a percentile is reported when at least this many gaps lie beyond it (else it is the max)
PERCENTILE_MIN_TAIL = 5
# prompt tokens a server may serve from its prompt cache before the prompt is not what was
# asked: every prompt starts with the same BOS, and random word orders share a first word or
# two now and then
CACHED_SHARE_ALLOWED = 0.05
CACHED_TOKENS_ALLOWED = 8


@dataclass(frozen=True)
class ServeWorkload:
    """What one repetition of a server measurement sends: ``requests`` completions of
    ``prompt_tokens`` prompt tokens and exactly ``generation_tokens`` generated ones (EOS
    suppressed), ``concurrency`` at a time, streamed, greedy, seeded."""

    prompt_tokens: int = 128
    generation_tokens: int = 64
    concurrency: int = 1
    requests: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        for name in ("prompt_tokens", "concurrency", "requests"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.generation_tokens < 2:
            problems.append(
                f"generation_tokens must be >= 2 to time decoding (got {self.generation_tokens})"
            )
        if self.requests < self.concurrency:
            problems.append(
                f"requests ({self.requests}) must be >= concurrency ({self.concurrency}): "
                "fewer requests never reach that concurrency"
            )
        if problems:
            raise ValueError("invalid server workload: " + "; ".join(problems))

    @property
    def label(self) -> str:
        """``pp128+tg64 x4 c1``: prompt and generated tokens, requests, concurrency."""
        return (
            f"pp{self.prompt_tokens}+tg{self.generation_tokens} "
            f"x{self.requests} c{self.concurrency}"
        )

    def identity(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass
class ServeRepetition:
    """The raw record of one repetition: its requests, its wall time, and the started server's
    peak memory in it (``None`` for a connected server)."""

    requests: list[RequestRecord]
    wall: float
    peak_memory: int | None


def percentile_or_note(gaps: Sequence[float], name: str) -> tuple[float | None, str | None]:
    """(the percentile ``name`` of ``gaps``, None), or (None, why it is left out): too few gaps
    beyond it for it to be more than one of the largest gaps."""
    import numpy as np

    q = PERCENTILES[name]
    needed = round(PERCENTILE_MIN_TAIL / (1 - q))
    if len(gaps) < needed:
        return None, (
            f"{name} not measured: {len(gaps)} inter-token gaps per repetition, and it needs "
            f"{needed} (at least {PERCENTILE_MIN_TAIL} beyond it; with fewer it is one of the "
            "largest gaps); raise requests or generation_tokens"
        )
    return float(np.percentile(gaps, q * 100)), None


def repetition_samples(
    records: Sequence[RequestRecord], wall: float, prompt_tokens: int
) -> tuple[dict[str, float], dict[str, str]]:
    """The metrics of one repetition (see the module docstring), and why a percentile is left
    out, by metric."""
    import numpy as np

    def median(values: Sequence[float]) -> float:
        return float(np.median(values))

    samples = {
        "ttft": median([r.ttft for r in records]),
        "prompt_tps": median([prompt_tokens / r.ttft for r in records]),
        "e2e_latency": median([r.t_end - r.t_send for r in records]),
        "throughput_tps": sum(r.completion_tokens for r in records) / wall,
    }
    decoding = [r for r in records if len(r.t_events) > 1]
    if decoding:
        samples["generation_tps"] = median(
            [(r.completion_tokens - 1) / (r.t_events[-1] - r.t_events[0]) for r in decoding]
        )
    left_out = {}
    gaps = [g for r in records for g in r.gaps]
    for name in PERCENTILES:
        value, note = percentile_or_note(gaps, name)
        if value is None:
            left_out[name] = str(note)
        else:
            samples[name] = value
    timed = [r.server_timings for r in records if r.server_timings]
    if timed and all("prompt_per_second" in t and "predicted_per_second" in t for t in timed):
        samples["server_prompt_tps"] = median([t["prompt_per_second"] for t in timed])
        samples["server_generation_tps"] = median([t["predicted_per_second"] for t in timed])
    return samples, left_out


def stopped_early(server: Server, generated: int, wanted: int) -> ServerError:
    return ServerError(
        f"{server.url} stopped after {generated} of {wanted} tokens: it ended generation early "
        "(EOS) although asked to ignore it (ignore_eos, min_tokens"
        + (", logit_bias" if server.eos_ids else "")
        + "); a speed figure from less work would be false"
    )


def check_work(record: RequestRecord, server: Server, workload: ServeWorkload) -> None:
    """Refuse a request that did other work than asked: fewer generated tokens where usage
    counts them (it stopped at EOS; fewer stream events prove nothing by themselves, see
    ``settle_event_counts``), more (it ignores max_tokens; accepted and counted only from a
    server known to run past it, ``ServerKind.overshoots``), a prompt of another length (where
    the server says), or a prompt served from the server's cache. Rates count the tokens
    really generated."""
    wanted, generated = workload.generation_tokens, record.completion_tokens
    if generated > wanted and not server.overshoots:
        raise ServerError(
            f"{server.url} generated {generated} tokens for max_tokens={wanted}: the server "
            "ignores max_tokens, and a measurement of other work than asked would be false"
        )
    if generated < wanted and record.counted == "usage":
        raise stopped_early(server, generated, wanted)
    if record.prompt_tokens is not None and record.prompt_tokens != workload.prompt_tokens:
        raise ServerError(
            f"{server.url} counted {record.prompt_tokens} prompt tokens, not the "
            f"{workload.prompt_tokens} the prompt was built for"
        )
    cached = record.cached_tokens or 0
    if cached > max(CACHED_SHARE_ALLOWED * workload.prompt_tokens, CACHED_TOKENS_ALLOWED):
        raise ServerError(
            f"{server.url} served {cached} of {workload.prompt_tokens} prompt tokens from its "
            "prompt cache: the prompt was not processed, so TTFT would be false"
        )


def settle_event_counts(
    server: Server, workload: ServeWorkload, records: Sequence[RequestRecord]
) -> list[str]:
    """Token counts of a stream without usage are its events, which a server may merge (it
    holds back a token that ends inside a UTF-8 character). Where they fall short, one plain
    request, after the timing, asks the server's usage: if it generates exactly as many as
    asked, the short counts are set to that; if fewer, it stops early and is refused. The
    notes say how the counts were settled."""
    wanted = workload.generation_tokens
    if not any(r.counted == "events" for r in records):
        return []
    short = [r for r in records if r.counted == "events" and r.completion_tokens < wanted]
    if not short:
        return ["the stream carried no usage: generated tokens were counted from its events"]
    body = server.request_body(server.prompt(workload.prompt_tokens), wanted)
    usage = server.client.post(COMPLETIONS, body).get("usage") or {}
    if "completion_tokens" not in usage:
        return [
            f"the stream carried no usage and {len(short)} requests had fewer events than "
            f"tokens asked ({min(r.completion_tokens for r in short)} for {wanted}); the "
            "server reports no usage at all, so their counts are not verified"
        ]
    if int(usage["completion_tokens"]) < wanted:
        raise stopped_early(server, int(usage["completion_tokens"]), wanted)
    for record in short:
        record.completion_tokens = wanted
    return [
        f"the stream carried no usage and merged tokens into fewer events in {len(short)} "
        f"of {len(records)} requests; a plain request's usage showed the server generates "
        "exactly as many as asked, so those were counted as such"
    ]


def measure_server(
    server: Server,
    workload: ServeWorkload,
    *,
    warmup: int = 1,
    repetitions: int = 5,
    cooldown: float = 0.0,
    progress: ProgressFn | None = None,
) -> Measurement:
    """``warmup`` untimed repetitions, then ``repetitions`` timed ones of ``workload`` against
    ``server``; every request's work is checked (``check_work``)."""
    protocol = Repetitions(warmup, repetitions, cooldown)
    pid = server.process.pid if server.process is not None else None
    lifetime_peak = False  # the server's peak could not be reset before a repetition

    def send(prompt: str) -> RequestRecord:
        body = server.request_body(prompt, workload.generation_tokens, stream=True)
        body["seed"] = workload.seed
        record = server.client.stream(COMPLETIONS, body)
        check_work(record, server, workload)
        return record

    def once() -> ServeRepetition:
        texts = [server.prompt(workload.prompt_tokens) for _ in range(workload.requests)]
        nonlocal lifetime_peak
        lifetime_peak |= pid is not None and not memory.reset_peak(pid=pid)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(workload.concurrency, thread_name_prefix="mlxperf-req") as pool:
            futures = [pool.submit(send, text) for text in texts]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                for future in futures:
                    future.cancel()
                raise failed[0].exception()  # type: ignore[misc]
        wall = time.perf_counter() - t0
        peak = memory.peak(pid=pid) if pid is not None else None
        return ServeRepetition([f.result() for f in futures], wall, peak)

    def account(rep: ServeRepetition) -> tuple[int, str]:
        tokens = sum(workload.prompt_tokens + r.completion_tokens for r in rep.requests)
        samples, _ = repetition_samples(rep.requests, rep.wall, workload.prompt_tokens)
        return tokens, (
            f"TTFT {samples['ttft'] * 1e3:.0f} ms, "
            f"{samples['throughput_tps']:.1f} tok/s generated in all"
        )

    reps, wall_time = protocol.run(once, progress, account)
    records = [r for rep in reps for r in rep.requests]
    notes = settle_event_counts(server, workload, records)
    samples: dict[str, list[float]] = {}
    left_out: dict[str, str] = {}  # the first repetition's reason, per metric
    for rep in reps:
        rep_samples, rep_left_out = repetition_samples(
            rep.requests, rep.wall, workload.prompt_tokens
        )
        if rep.peak_memory is not None:
            rep_samples["process_peak_memory"] = float(rep.peak_memory)
        for name, value in rep_samples.items():
            samples.setdefault(name, []).append(value)
        for name, note in rep_left_out.items():
            left_out.setdefault(name, note)
    notes += left_out.values()
    # a metric must have a sample in every repetition to be judged (a percentile may not)
    samples = {k: v for k, v in samples.items() if len(v) == len(reps)}
    if lifetime_peak:
        notes.append(
            "process_peak_memory is the server's lifetime peak: it cannot be reset on "
            f"{sys.platform}"
        )
    most = max(r.completion_tokens for r in records)
    if most > workload.generation_tokens:
        notes.append(
            f"the server generated up to {most} tokens for max_tokens="
            f"{workload.generation_tokens} (llama-cpp-python runs on while a multi-byte "
            "character is incomplete); rates count them"
        )
    return Measurement(
        backend=server.backend,
        model=server.identity,
        workload=workload,
        samples=samples,
        raw=reps,
        warmup=warmup,
        wall_time=wall_time,
        notes=notes,
        build=server.build,
    )
