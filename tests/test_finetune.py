"""Fine-tuning measurements with the real mlx / mlx_lm trainer on the tiny synthetic model.

Sizes: tiny (hidden 256, 4 layers), batches of 2 sequences truncated to 64 tokens. There the
activations are about as large as the float32 weights, so every memory lever of mlx-lm's
LORA.md shows clearly (observed peaks: baseline 35 MB; grad checkpointing 27 MB, batch 1
26 MB, 1 LoRA layer 24 MB, 4-bit base 23 MB) while each run takes a couple of seconds on the
MLX CPU backend.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import shutil
import statistics
from pathlib import Path
from typing import Any

import pytest

from pytest_mlxperf import synth
from pytest_mlxperf.backends import finetune, sources
from pytest_mlxperf.backends.finetune import FinetuneSample, FinetuneWorkload
from pytest_mlxperf.measuring.measure import Measurement
from pytest_mlxperf.stats.metrics import METRICS
from tests.conftest import skip_below

SEQ = 64
BASE = dict(iterations=2, warmup_iterations=1, batch_size=2, num_layers=-1, max_seq_length=SEQ)
LEVERS = {  # changes to BASE on the fp32 model; the fourth lever is the 4-bit model itself
    "grad checkpointing": dict(grad_checkpoint=True),
    "smaller batch": dict(batch_size=1),
    "fewer LoRA layers": dict(num_layers=1),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 chat examples of about 40 words: longer than SEQ tokens, so every batch is full."""
    return finetune.make_dataset(tmp_path_factory.mktemp("ft") / "data", n=16, tokens=40)


def _load(quant: str) -> Any:
    pytest.importorskip("mlx_lm")
    from pytest_mlxperf.backends.mlx import MLXModel

    return MLXModel(sources.resolve("mlx", f"synth:tiny@{quant}"))


def _logits(model: Any) -> Any:
    import mlx.core as mx

    out = model(mx.arange(32)[None])
    mx.eval(out)
    return out


@pytest.fixture(scope="module")
def qlora(synth_cache: Path, dataset: Path) -> dict[str, Any]:
    skip_below("mlx-lm", finetune.MIN_MLX_LM, "fine-tuning")
    """The QLoRA lever on the 4-bit tiny model, which is then released: the allocator peak
    counts every array the process holds, so each model is measured with no other resident."""
    loaded = _load("4bit")
    workload = FinetuneWorkload(dataset=str(dataset), **BASE)
    measured = finetune.measure_finetune(
        loaded.model, loaded.tokenizer, workload, warmup=0, repetitions=1
    )
    result = {
        "sample": measured.raw[0],
        "identity": measured.model,
        "weights": _weight_bytes(loaded.model),
    }
    del loaded
    gc.collect()
    return result


@pytest.fixture(scope="module")
def tiny(qlora: dict[str, Any]) -> dict[str, Any]:
    """The fp32 tiny model (loaded after the 4-bit one is gone) plus what it looked like
    before any fine-tuning."""
    loaded = _load("fp32")
    block = type(loaded.model.layers[0])
    return {
        "loaded": loaded,
        "modules": dict(loaded.model.named_modules()),
        "block_call": vars(block).get("__call__"),
        "training": loaded.model.training,
        "logits": _logits(loaded.model),
    }


@pytest.fixture(scope="module")
def baseline(tiny: dict[str, Any], dataset: Path) -> Measurement:
    loaded = tiny["loaded"]
    workload = FinetuneWorkload(dataset=str(dataset), **BASE)
    return finetune.measure_finetune(
        loaded.model, loaded.tokenizer, workload, warmup=0, repetitions=2, identity=loaded.identity
    )


@pytest.fixture(scope="module")
def levers(tiny: dict[str, Any], qlora: dict[str, Any], dataset: Path) -> dict[str, FinetuneSample]:
    """One repetition per memory lever, each changing one thing from BASE."""
    loaded = tiny["loaded"]
    samples = {"quantized base (QLoRA)": qlora["sample"]}
    for name, change in LEVERS.items():
        workload = FinetuneWorkload(dataset=str(dataset), **{**BASE, **change})
        samples[name] = finetune.run_finetune(loaded.model, loaded.tokenizer, workload)
    return samples


def _base_peak(baseline: Measurement) -> float:
    return statistics.median(baseline.samples["peak_memory"])


def _weight_bytes(model: Any) -> int:
    from mlx.utils import tree_flatten

    return sum(p.nbytes for _, p in tree_flatten(model.parameters()))


# --------------------------------------------------------------------------- measurement


def test_repetition_reports_sane_positive_metrics(
    baseline: Measurement, tiny: dict[str, Any]
) -> None:
    assert baseline.backend == "mlx"
    assert baseline.model == tiny["loaded"].identity
    assert set(baseline.samples) == {m.name for m in finetune.FINETUNE_METRICS}
    for name, values in baseline.samples.items():
        assert len(values) == 2
        assert all(math.isfinite(v) and (v > 0 or METRICS[name].absolute) for v in values), (
            name,
            values,
        )
    assert all(abs(g) < 0.01 for g in baseline.samples["memory_growth"])  # no leak here
    for it_s, tps in zip(
        baseline.samples["iterations_per_s"], baseline.samples["trained_tps"], strict=True
    ):
        assert tps == pytest.approx(it_s * 2 * (SEQ - 1))
    # the peak holds the resident base weights plus the training state, and no more than
    # a few times that on this small shape
    weights = _weight_bytes(tiny["loaded"].model)
    assert weights < _base_peak(baseline) < 10 * weights
    for raw in baseline.raw:
        assert all(math.isfinite(loss) and loss > 0 for loss in raw.losses)


def test_the_work_done_is_what_was_asked(baseline: Measurement) -> None:
    for raw in baseline.raw:
        assert isinstance(raw, FinetuneSample)
        total = BASE["warmup_iterations"] + BASE["iterations"]
        assert len(raw.t_iterations) == total
        assert raw.batch_sequences == [BASE["batch_size"]] * total
        # every example is longer than SEQ: full batches, SEQ - 1 next-token targets each
        assert raw.padded_lengths == [SEQ] * total
        assert raw.trained_tokens == [BASE["batch_size"] * (SEQ - 1)] * total
        assert raw.lora_layers == 4


def test_timestamps_agree_with_mlx_lm_own_step_times(baseline: Measurement) -> None:
    """mlx-lm times each step from the batch being ready to its evaluation; our window adds
    only batch preparation and the callback, a small share on any real step."""
    for raw in baseline.raw:
        warm = raw.warmup_iterations
        window = raw.t_iterations[-1] - raw.t_iterations[warm - 1]
        ratio = sum(raw.step_seconds[warm:]) / window
        assert 0.8 < ratio <= 1.0, ratio


def test_measurement_is_json_serializable_like_the_sessions_records(
    baseline: Measurement,
) -> None:
    record = {
        "workload": baseline.workload.identity(),
        "workload_label": baseline.workload.label,
        "samples": baseline.samples,
        "raw": [dataclasses.asdict(r) for r in baseline.raw],
    }
    assert json.loads(json.dumps(record))["workload_label"] == "lora-b2-lall-s64"


def test_default_model_identity_says_what_was_trained(qlora: dict[str, Any]) -> None:
    ident = qlora["identity"]
    assert ident == {
        "backend": "mlx",
        "name": "llama",
        "parameters": synth.PRESETS["tiny"].param_count(),
        "bits": [4],
    }


def test_adapters_do_not_stack_and_the_model_is_restored(
    baseline: Measurement, levers: dict[str, FinetuneSample], tiny: dict[str, Any]
) -> None:
    import mlx.core as mx
    import mlx.nn as nn

    model = tiny["loaded"].model
    rank = 8
    expected = sum(
        rank * (m.weight.shape[0] + m.weight.shape[1])
        for layer in model.layers
        for m in layer.modules()
        if isinstance(m, nn.Linear)
    )
    assert [raw.trainable_parameters for raw in baseline.raw] == [expected, expected]
    assert levers["grad checkpointing"].trainable_parameters == expected
    # after five runs on this model: the same module objects under the same names, frozen
    # weights untouched, and the block class without mlx-lm's checkpointing patch
    after = dict(model.named_modules())
    assert after.keys() == tiny["modules"].keys()
    assert all(after[name] is module for name, module in tiny["modules"].items())
    assert mx.array_equal(_logits(model), tiny["logits"]).item()
    assert vars(type(model.layers[0])).get("__call__") is tiny["block_call"]
    assert model.training == tiny["training"]


# --------------------------------------------------------------------------- memory levers


@pytest.mark.parametrize("lever", [*LEVERS, "quantized base (QLoRA)"])
def test_memory_lever_lowers_peak_memory(
    lever: str, baseline: Measurement, levers: dict[str, FinetuneSample]
) -> None:
    """mlx-lm's LORA.md "Memory Issues": each lever, alone, lowers the peak (by 22-34%
    observed; the allocator peak is exact, so 10% is a margin, not noise)."""
    base, peak = _base_peak(baseline), levers[lever].peak_memory
    assert peak < 0.9 * base, f"{lever}: {peak / 1e6:.1f} MB vs baseline {base / 1e6:.1f} MB"


def test_qlora_saving_is_the_weights_saving(
    baseline: Measurement, qlora: dict[str, Any], tiny: dict[str, Any]
) -> None:
    """A quantized base lowers the peak by what the smaller weights save (the activations,
    adapters and optimizer state are float32 either way)."""
    saved = _weight_bytes(tiny["loaded"].model) - qlora["weights"]
    drop = _base_peak(baseline) - qlora["sample"].peak_memory
    assert drop == pytest.approx(saved, rel=0.25)


def test_both_models_are_measured_on_the_same_background(
    baseline: Measurement, qlora: dict[str, Any], tiny: dict[str, Any]
) -> None:
    """What MLX held when a repetition began, beyond that model's own weights, is the same
    for the 4-bit and the fp32 runs (the 4-bit model was released first), so the QLoRA
    comparison is like with like; in a whole test session other modules' arrays may add a
    constant background."""
    fp32 = [raw.active_memory - _weight_bytes(tiny["loaded"].model) for raw in baseline.raw]
    q4 = qlora["sample"].active_memory - qlora["weights"]
    assert max(abs(b - q4) for b in fp32) < 0.01 * _base_peak(baseline)
    assert all(raw.peak_memory > raw.active_memory for raw in baseline.raw)


# --------------------------------------------------------------------------- workload


@pytest.mark.parametrize(
    "change",
    [
        {"iterations": 3},
        {"batch_size": 8},
        {"num_layers": 8},
        {"grad_checkpoint": True},
        {"max_seq_length": 1024},
        {"lora_rank": 16},
        {"learning_rate": 2e-5},
        {"seed": 1},
        {"warmup_iterations": 3},
    ],
)
def test_identity_changes_with_each_lever(dataset: Path, change: dict[str, Any]) -> None:
    base = FinetuneWorkload(dataset=str(dataset))
    assert dataclasses.replace(base, **change).identity() != base.identity()


def test_identity_is_the_dataset_content_not_its_path(dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.jsonl"
    shutil.copy(dataset, copy)
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(dataset, folder / "train.jsonl")
    base = FinetuneWorkload(dataset=str(dataset)).identity()
    assert FinetuneWorkload(dataset=str(copy)).identity() == base
    assert FinetuneWorkload(dataset=str(folder)).identity() == base
    copy.write_text(dataset.read_text() + copy.read_text().splitlines()[0] + "\n")
    assert FinetuneWorkload(dataset=str(copy)).identity() != base


def test_labels(dataset: Path) -> None:
    w = FinetuneWorkload(dataset=str(dataset))
    assert w.label == "lora-b4-l16-s512"
    assert (
        dataclasses.replace(w, grad_checkpoint=True, num_layers=-1).label == "lora-b4-lall-s512+gc"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"iterations": 0}, "iterations must be >= 1"),
        ({"num_layers": 0}, "num_layers must be >= 1 or -1"),
        ({"warmup_iterations": 0}, "warmup_iterations must be >= 1"),
        ({"learning_rate": 0.0}, "learning_rate must be > 0"),
        ({"dataset": "/nonexistent/data"}, "neither a jsonl file nor a folder"),
    ],
)
def test_invalid_workloads_are_refused(dataset: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FinetuneWorkload(**{"dataset": str(dataset), **change})


# --------------------------------------------------------------------------- dataset


def test_make_dataset_is_deterministic(tmp_path: Path) -> None:
    a = finetune.make_dataset(tmp_path / "a.jsonl", n=8, seed=3)
    b = finetune.make_dataset(tmp_path / "b", n=8, seed=3)
    assert b == tmp_path / "b" / "train.jsonl"
    assert a.read_bytes() == b.read_bytes()
    assert finetune.make_dataset(tmp_path / "c.jsonl", n=8, seed=4).read_bytes() != a.read_bytes()
    rows = [json.loads(line) for line in a.read_text().splitlines()]
    assert len(rows) == 8
    assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]


def test_completions_dataset_tokenizes_with_the_fallback_template(
    tmp_path: Path, tiny: dict[str, Any]
) -> None:
    """Synthetic tokenizers have no chat template; the fallback is used without changing
    the tokenizer itself."""
    tokenizer = tiny["loaded"].tokenizer
    file = finetune.make_dataset(tmp_path / "c.jsonl", n=4, kind="completions", tokens=20)
    data = finetune.load_dataset(tokenizer, FinetuneWorkload(dataset=str(file), batch_size=2))
    assert len(data) == 4
    tokens, offset = data[0]
    text = tokenizer.decode(tokens)
    assert text.startswith("<|im_start|>user\n") and "<|im_start|>assistant\n" in text
    assert offset == 0
    assert tokenizer.chat_template is None


def test_finetune_metrics_to_merge() -> None:
    derived = {
        "iterations_per_s",
        "trained_tps",
        "peak_memory",
        "process_peak_memory",
        "memory_growth",
    }
    assert {m.name for m in finetune.FINETUNE_METRICS} == derived
    assert "peak_memory" in METRICS  # reused: same definition, MLX allocator peak
    assert all(m.gated for m in finetune.FINETUNE_METRICS)
    assert [m.higher_is_better for m in finetune.FINETUNE_METRICS] == [True, True] + [False] * 3


def test_memory_kept_across_iterations_is_flagged_and_the_same_run_without_it_is_not(
    tiny: dict[str, Any], dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training that keeps a reference to 16 MB per iteration (as a caller that collects
    every batch's outputs does) grows memory steadily: ``memory_growth`` flags it, although
    the allocator's peak of any single iteration hardly moves; without it, nothing is flagged."""
    import mlx.core as mx
    from mlx_lm.tuner import trainer

    from pytest_mlxperf.stats.verdicts import Verdict, compare_metric

    loaded = tiny["loaded"]
    workload = FinetuneWorkload(dataset=str(dataset), **{**BASE, "iterations": 4})

    def growth() -> list[float]:
        measured = finetune.measure_finetune(
            loaded.model, loaded.tokenizer, workload, warmup=1, repetitions=5
        )
        return measured.samples["memory_growth"]

    def judged(before: list[float], now: list[float]) -> Verdict:
        metric = METRICS["memory_growth"]
        return compare_metric(metric, before, now, tolerance=metric.default_tolerance, alpha=0.01)

    first, second = growth(), growth()
    kept: list[Any] = []
    batches = trainer.iterate_batches

    def keeping(**kwargs: Any) -> Any:
        for batch in batches(**kwargs):
            kept.append(mx.ones((4_000_000,)) * len(kept))
            mx.eval(kept[-1])
            yield batch

    monkeypatch.setattr(trainer, "iterate_batches", keeping)
    leaking = growth()
    assert judged(first, second).verdict is Verdict.PASS
    assert judged(first, leaking).verdict is Verdict.REGRESSION, leaking


# --------------------------------------------------------------------------- capability


def _llamacpp_model() -> Any:
    """A llama.cpp model object that was never loaded: refusing needs no model."""
    from pytest_mlxperf.backends.llamacpp import LlamaCppModel

    model = object.__new__(LlamaCppModel)
    model.identity = {"backend": "llamacpp", "name": "tiny"}
    model.load_time = 0.1
    return model


def test_backend_without_the_capability_refuses_through_the_interface(dataset: Path) -> None:
    from pytest_mlxperf.backends.mlx import MLXModel
    from pytest_mlxperf.measuring.base import BackendError, LoadedModel

    assert type(_llamacpp_model()).finetune is LoadedModel.finetune
    assert MLXModel.finetune is not LoadedModel.finetune
    with pytest.raises(BackendError, match="fine-tuning is measured with MLX only, not 'llamacpp'"):
        _llamacpp_model().finetune(FinetuneWorkload(dataset=str(dataset)), 0, 1)


def test_session_passes_the_refusal_on_and_records_nothing(dataset: Path, tmp_path: Path) -> None:
    from pytest_mlxperf.measuring.base import BackendError
    from pytest_mlxperf.session import PerfSession
    from pytest_mlxperf.settings.config import Settings

    session = PerfSession(Settings(machine="box"), tmp_path)
    workload = FinetuneWorkload(dataset=str(dataset))
    with pytest.raises(BackendError, match="MLX only, not 'llamacpp'"):
        session.finetune("t.py::t", _llamacpp_model(), workload, session.settings)
    assert session.results == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"repetitions": 0}, "repetitions must be >= 1"),
        ({"warmup": -1}, "warmup must be >= 0"),
    ],
)
def test_repetition_settings_are_refused_before_any_training(
    dataset: Path, settings: dict[str, int], message: str
) -> None:
    workload = FinetuneWorkload(dataset=str(dataset))
    with pytest.raises(ValueError, match=message):
        finetune.measure_finetune(None, None, workload, **settings)  # type: ignore[arg-type]
