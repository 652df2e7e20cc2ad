"""Session logic on a scripted model (a unit test of the protocol and verdict flow; the real
backends are exercised end to end in test_e2e.py and test_faults.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_mlxperf.backends.base import LoadedModel, RawSample
from pytest_mlxperf.config import Settings
from pytest_mlxperf.measure import MeasurementError, derive_metrics, measure
from pytest_mlxperf.session import PerfSession
from pytest_mlxperf.verdicts import Verdict
from pytest_mlxperf.workload import Workload

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

    def run(self, prompt: list[int], context: list[int], workload: Workload) -> RawSample:
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
