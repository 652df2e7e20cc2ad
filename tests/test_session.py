"""Session logic on a scripted model (a unit test of the protocol and verdict flow; the real
backends are exercised end to end in test_e2e.py and test_faults.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_mlxperf import session as session_module
from pytest_mlxperf.host import machine
from pytest_mlxperf.measuring.base import LoadedModel, RawSample
from pytest_mlxperf.measuring.measure import MeasurementError, derive_metrics, measure
from pytest_mlxperf.measuring.progress import Ticker
from pytest_mlxperf.measuring.workload import Workload
from pytest_mlxperf.session import PerfSession
from pytest_mlxperf.settings.config import Settings
from pytest_mlxperf.stats.verdicts import Verdict
from tests.test_machine import STEADY, ZEN4, ZEN5, scaled

WL = Workload(prompt_tokens=100, generation_tokens=11)


class ScriptedModel(LoadedModel):
    """Decodes at the speed its script says, one measurement (warm-up + reps) per entry."""

    backend = "mlx"
    load_time = 0.5
    vocab_size = 50
    context_length = 1000

    def __init__(
        self, speeds: list[float], generated: int | None = None, first_token: int = 0
    ) -> None:
        self.first_token = first_token
        self.identity = {"backend": "mlx", "name": "scripted", "hash": "0"}
        self.speeds = speeds
        self.calls = 0
        self.generated = generated

    def tokenize(self, text: str) -> list[int]:
        return [ord(c) % 50 for c in text]

    def run(
        self,
        prompt: list[int],
        context: list[int],
        workload: Workload,
        ticks: Ticker | None = None,
    ) -> RawSample:
        reps = 1 + 5  # warm-up + repetitions of the settings used below
        speed = self.speeds[min(self.calls // reps, len(self.speeds) - 1)]
        self.calls += 1
        jitter = 1 + 0.001 * (self.calls % 5)
        n = self.generated or workload.generation_tokens
        stamps = [0.1 + i / (speed * jitter) for i in range(n)]
        tokens = [self.first_token, *range(1, n)]
        return RawSample(0.0, stamps, stamps[-1], tokens, 1000)


def test_derive_metrics_definitions() -> None:
    raw = RawSample(10.0, [10.5, 10.6, 10.7, 10.8, 10.9], 11.0, [1, 2, 3, 4, 5], 123)
    m = derive_metrics(raw, 100)
    assert m["ttft"] == pytest.approx(0.5)
    assert m["prompt_tps"] == pytest.approx(200)
    assert m["generation_tps"] == pytest.approx(4 / 0.4)  # first token excluded
    assert m["peak_memory"] == 123


def test_generated_count_is_verified() -> None:
    with pytest.raises(MeasurementError, match="generated 7 tokens but 11 were requested"):
        measure(ScriptedModel([100.0], generated=7), WL, warmup=0, repetitions=2)


def session_with_baseline(tmp_path: Path, confirm: int) -> PerfSession:
    saver = PerfSession(Settings(save_baselines=True, machine="box"), tmp_path)
    saver.run("t.py::t", ScriptedModel([100.0]), WL, saver.settings)
    return PerfSession(Settings(machine="box", confirm=confirm), tmp_path)


def test_transient_slowdown_is_not_failed_after_confirmation(tmp_path: Path) -> None:
    session = session_with_baseline(tmp_path, confirm=1)
    result = session.run("t.py::t", ScriptedModel([50.0, 100.0]), WL, session.settings)
    assert result.verdict is Verdict.PASS
    assert "treated as noise" in result.notes[0] and "generation_tps" in result.notes[0]


def test_persistent_slowdown_is_confirmed(tmp_path: Path) -> None:
    session = session_with_baseline(tmp_path, confirm=2)
    model = ScriptedModel([50.0])
    result = session.run("t.py::t", model, WL, session.settings)
    assert result.verdict is Verdict.REGRESSION
    assert result.notes == ["confirmed by re-measurement 2 of 2"]
    assert model.calls == 3 * 6  # first measurement and two confirmations


def test_no_confirmation_fails_at_once(tmp_path: Path) -> None:
    session = session_with_baseline(tmp_path, confirm=0)
    model = ScriptedModel([50.0, 100.0])
    assert session.run("t.py::t", model, WL, session.settings).verdict is Verdict.REGRESSION
    assert model.calls == 6


def test_same_measurement_twice_in_one_test_needs_a_name(tmp_path: Path) -> None:
    session = PerfSession(Settings(machine="box"), tmp_path)
    model = ScriptedModel([100.0])
    session.run("t.py::t", model, WL, session.settings)
    with pytest.raises(ValueError, match="measured 'mlx:scripted:pp100\\+tg11' twice"):
        session.run("t.py::t", model, WL, session.settings)
    session.run("t.py::t", model, WL, session.settings, name="again")


def test_backend_table_lines_up_backends_of_one_model() -> None:
    from pytest_mlxperf.render.text import backend_table

    def record(backend: str, quant: object, tps: float, label: str = "pp8+tg8") -> dict:
        medians = dict.fromkeys(
            ("prompt_tps", "generation_tps", "ttft", "peak_memory", "load_time"), 1.0
        )
        medians["generation_tps"] = tps
        return {
            "backend": backend,
            "model": {"name": "synth:tiny", "quantization": quant},
            "workload_label": label,
            "medians": medians,
        }

    text = backend_table(
        [
            record("mlx", {"bits": 4, "group_size": 64}, 150.0),
            record("llamacpp", "llama ?B Q4_K - Medium", 2900.0),
            record("mlx", None, 120.0, label="pp16+tg8"),  # only one backend: not shown
        ]
    )
    assert text is not None
    lines = text.splitlines()
    assert len(lines) == 4
    assert "llamacpp" in lines[2] and "Q4_K - Medium" in lines[2] and "2900.0 tok/s" in lines[2]
    assert "mlx" in lines[3] and "4bit/g64" in lines[3] and "150.0 tok/s" in lines[3]
    assert backend_table([record("mlx", None, 1.0)]) is None


def test_changed_greedy_output_is_reported_beside_speed(tmp_path: Path) -> None:
    same = session_with_baseline(tmp_path / "a", confirm=0)
    result = same.run("t.py::t", ScriptedModel([100.0]), WL, same.settings)
    assert result.verdict is Verdict.PASS and result.notes == []
    other = session_with_baseline(tmp_path / "b", confirm=0)
    result = other.run("t.py::t", ScriptedModel([100.0], first_token=7), WL, other.settings)
    assert result.verdict is Verdict.PASS
    assert result.notes[0].startswith("output changed: the greedy tokens differ")


@pytest.fixture(autouse=True)
def steady_canary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every session's machine speed canary reads the same (and costs nothing); a test that
    changes the machine patches it again."""
    monkeypatch.setattr(session_module, "run_canary", lambda: STEADY)


def test_canary_is_timed_once_before_the_first_measurement_and_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = ScriptedModel([100.0])
    calls_before_canary = []
    monkeypatch.setattr(
        session_module, "run_canary", lambda: calls_before_canary.append(model.calls) or STEADY
    )
    session = PerfSession(Settings(machine="box", save_baselines=True), tmp_path)
    first = session.run("t.py::t", model, WL, session.settings)
    second = session.run("t.py::u", model, WL, session.settings)
    assert calls_before_canary == [0]
    assert first.canary == second.canary == STEADY
    assert first.to_json()["canary"] == STEADY
    entry, _ = session.store.find("t.py::t", first.key, "box")
    assert entry is not None and entry["runs"][-1]["canary"] == STEADY


def test_machine_speed_change_makes_the_result_not_comparable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = session_with_baseline(tmp_path, confirm=0)
    monkeypatch.setattr(
        session_module, "run_canary", lambda: scaled(STEADY, "canary_compute", 1 / 1.92)
    )
    result = session.run("t.py::t", ScriptedModel([50.0]), WL, session.settings)
    assert result.verdict is Verdict.NOT_COMPARABLE
    # the numbers stay there to see, with what they would have said
    assert [c.metric.name for c in result.regressions] == ["generation_tps"]
    (note,) = result.notes
    assert note.startswith(
        "machine speed changed: canary compute 1.92x faster than when the baseline was recorded"
    )
    assert "these numbers reflect the machine, not the code" in note
    assert "not comparable" in result.report()


def test_a_change_beyond_the_machine_speed_change_still_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine 16% faster explains a few percent either way, not a 100x slowdown."""
    session = session_with_baseline(tmp_path, confirm=0)
    monkeypatch.setattr(
        session_module, "run_canary", lambda: scaled(STEADY, "canary_compute", 1 / 1.16)
    )
    result = session.run("t.py::t", ScriptedModel([1.0]), WL, session.settings)
    assert result.verdict is Verdict.REGRESSION
    (note,) = result.notes
    assert note.startswith("machine speed changed: canary compute 1.16x faster")
    assert "the change of generation_tps is beyond what a machine 1.16x faster or slower" in note
    # -20%, beyond the 10% tolerance but within what the faster machine explains: not compared
    again = PerfSession(Settings(machine="box", confirm=0), tmp_path)
    within = again.run("t.py::t", ScriptedModel([80.0]), WL, again.settings)
    assert within.verdict is Verdict.NOT_COMPARABLE
    assert [c.metric.name for c in within.regressions] == ["generation_tps"]


def test_baseline_without_canary_is_judged_as_before(tmp_path: Path) -> None:
    session = session_with_baseline(tmp_path, confirm=0)
    path = session.store.path_for("t.py::t")
    data = json.loads(path.read_text())
    for entry in data["entries"].values():
        for run in entry["runs"]:
            del run["canary"]  # a file written before the canary existed
    path.write_text(json.dumps(data))
    assert session.run("t.py::t", ScriptedModel([100.0]), WL, session.settings).verdict is (
        Verdict.PASS
    )


def test_baseline_of_an_older_fingerprint_says_to_re_record(tmp_path: Path) -> None:
    new = machine.fingerprint(system="Linux", cpuinfo=ZEN4)
    old = {k: v for k, v in new.items() if k not in machine.CPU_DETAIL["Linux"]}
    saver = PerfSession(Settings(save_baselines=True), tmp_path)
    saver.fingerprint = old
    saver.run("t.py::t", ScriptedModel([100.0]), WL, saver.settings)
    session = PerfSession(Settings(), tmp_path)
    session.fingerprint = new
    result = session.run("t.py::t", ScriptedModel([100.0]), WL, session.settings)
    assert result.verdict is Verdict.NOT_COMPARABLE
    (note,) = result.notes
    assert note.startswith("baseline recorded on other machine(s) only; machine.cpu_family: None")
    assert note.endswith(
        "recorded with an older fingerprint that did not tell CPU models apart "
        "(no cpu_family/cpu_model_id/cpu_stepping/isa): re-record it on this machine with "
        "--mlxperf-save-baselines"
    )
    # a machine that really differs is still told to name equivalent machines
    zen5 = PerfSession(Settings(), tmp_path)
    zen5.fingerprint = machine.fingerprint(system="Linux", cpuinfo=ZEN5)
    saver.fingerprint = new
    saver.run("t.py::v", ScriptedModel([100.0]), WL, saver.settings)
    (note,) = zen5.run("t.py::v", ScriptedModel([100.0]), WL, zen5.settings).notes
    assert "machine.cpu_family: '25' -> '26'" in note
    assert note.endswith("(name equivalent machines with --mlxperf-machine)")


def test_llamacpp_threads_default_to_all_physical_cores_but_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import psutil

    from pytest_mlxperf.backends.llamacpp import default_threads

    twelve = frozenset(range(12))
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 6 if not logical else 12)
    assert default_threads(twelve) == 5
    # confined (--mlxperf-cpus, a cpuset): no more threads than cores to run them
    assert default_threads(frozenset({0, 1, 2})) == 3
    assert default_threads(frozenset({7})) == 1
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: None if not logical else 12)
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    assert default_threads(twelve) == 2  # physical count unknown: logical cores
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert default_threads(twelve) == 1  # never none


@pytest.mark.usefixtures("synth_cache")
def test_llamacpp_gets_one_explicit_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    import llama_cpp

    from pytest_mlxperf.backends import llamacpp, load

    # 3: neither of llama-cpp-python's own defaults (cores // 2 and all cores) on any machine
    # this runs on, so it shows the value came from here
    monkeypatch.setattr(llamacpp, "default_threads", lambda: 3)
    model = load("llamacpp", "synth:tiny")
    try:
        assert model.identity["default_threads"] == 3
        ctx = model._instance(Workload(prompt_tokens=8, generation_tokens=4)).ctx
        assert (llama_cpp.llama_n_threads(ctx), llama_cpp.llama_n_threads_batch(ctx)) == (3, 3)
        ctx = model._instance(Workload(prompt_tokens=8, generation_tokens=4, threads=1)).ctx
        assert (llama_cpp.llama_n_threads(ctx), llama_cpp.llama_n_threads_batch(ctx)) == (1, 1)
    finally:
        model.close()
