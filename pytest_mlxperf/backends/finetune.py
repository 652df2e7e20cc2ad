"""Fine-tuning performance: short LoRA / QLoRA runs with mlx-lm's own trainer, measured.

Why: users fine-tune locally too, and an mlx / mlx-lm upgrade can make training slower or
hungrier just as it can inference. A repetition here is one short training run on an already
loaded model, driven by ``mlx_lm.tuner.trainer.train`` itself (its compiled step, its
``default_loss``, its ``iterate_batches``, its ``grad_checkpoint``), so what is measured is what
``mlx_lm.lora --train`` runs; a callback records a timestamp and the trained-token count after
every iteration. The result is the project's ``Measurement``, so baselines and verdicts apply
unchanged.

What one repetition does (``run_finetune``):

1. the base model is frozen and fresh LoRA adapters are attached to the last ``num_layers``
   blocks with mlx-lm's ``linear_to_lora_layers`` (QLoRA when the loaded model is quantized);
2. a fresh Adam optimizer trains for ``warmup_iterations + iterations`` steps of ``batch_size``
   sequences (each at most ``max_seq_length`` tokens; longer ones are truncated, as mlx-lm does);
3. the model is restored exactly: the original layers replace the LoRA wrappers, and the class
   patch that mlx-lm's ``grad_checkpoint`` applies to the block type is undone, so repetitions
   never stack adapters or checkpointing, and the model still serves inference measurements.

Definitions (per repetition; the timed window runs from the end of the last warm-up iteration,
which includes compiling the step, to the end of the last iteration):

- ``iterations_per_s`` = timed iterations / timed window;
- ``trained_tps`` = tokens that count toward the loss in the timed iterations (mlx-lm's
  ``trained_tokens``) / timed window. mlx-lm's ``default_loss`` also counts, and trains on, one
  padding position after each sequence shorter than its batch (up to mlx-lm 0.32 at least);
  batches of sequences truncated to ``max_seq_length`` have no padding and count exactly;
- ``peak_memory`` = MLX allocator peak of the whole repetition (reset before it): base weights,
  adapters, optimizer state, activations and gradients, plus whatever else the process holds
  (``FinetuneSample.active_memory``, e.g. another loaded model), as for inference;
  ``process_peak_memory`` = the process's peak over the same repetition (Linux VmHWM, macOS
  physical footprint), which also counts what the allocator does not see;
- ``memory_growth`` = the least-squares slope of the process's resident memory after each
  iteration, from the end of the warm-up iterations on, per iteration, as a fraction of the
  resident memory at its start: memory that grows without bound across iterations is a
  regression even while each peak stays within tolerance. (Reading the memory takes tens of
  microseconds per iteration, inside the timed window.)

The workload, ``FinetuneWorkload``, is defined beside ``Workload`` in
``pytest_mlxperf.measuring.workload`` (the backend interface names it) and can be imported from
here too.
mlx and mlx_lm are imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import gc
import io
import itertools
import json
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_mlxperf.backends import mlx_memory
from pytest_mlxperf.host import memory
from pytest_mlxperf.host.packages import below
from pytest_mlxperf.measuring.base import Measurement
from pytest_mlxperf.measuring.measure import MeasurementError, Repetitions
from pytest_mlxperf.measuring.progress import ProgressFn
from pytest_mlxperf.measuring.workload import FinetuneWorkload
from pytest_mlxperf.stats.metrics import METRICS, Metric

if TYPE_CHECKING:
    from collections.abc import Iterator

    import mlx.nn as nn
    from mlx_lm.tokenizer_utils import TokenizerWrapper

# mlx-lm's own defaults for `mlx_lm.lora` (lora.py CONFIG_DEFAULTS), fixed here: they are not
# levers of this measurement. mlx-lm >= 0.31 is the first whose `train` runs without a
# validation set and whose `iterate_batches` takes a seed.
LORA_SCALE = 20.0
LORA_DROPOUT = 0.0
MIN_MLX_LM = "0.31"

# Synthetic models ship a tokenizer without a chat template, and mlx-lm's chat and completions
# datasets need one; such tokenizers get this ChatML template (what Qwen models use).
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# the metrics a fine-tuning measurement reports (defined with the others in metrics.py)
FINETUNE_METRICS: tuple[Metric, ...] = tuple(
    METRICS[name]
    for name in (
        "iterations_per_s",
        "trained_tps",
        "peak_memory",
        "process_peak_memory",
        "memory_growth",
    )
)


@dataclass
class FinetuneSample:
    """The raw record of one repetition, warm-up iterations included (per-iteration lists).

    ``t_iterations[i]`` is ``time.perf_counter()`` when iteration ``i`` was done (its step
    evaluated; mlx-lm's callback). ``step_seconds`` is mlx-lm's own timing of each step (batch
    preparation and callback excluded), kept as a cross-check of the timestamps.
    ``active_memory`` is what MLX held when the repetition began (the base weights and anything
    else the process keeps, e.g. another loaded model): the allocator peak includes it.
    """

    t_start: float
    t_iterations: list[float]
    t_end: float
    warmup_iterations: int
    trained_tokens: list[int]
    batch_sequences: list[int]
    padded_lengths: list[int]
    step_seconds: list[float]
    losses: list[float]
    peak_memory: int
    active_memory: int
    trainable_parameters: int
    lora_layers: int
    resident: list[int] = field(default_factory=list)  # process memory after each iteration
    process_peak_memory: int | None = None
    swap: int | None = None


def derive_finetune_metrics(sample: FinetuneSample) -> dict[str, float]:
    """The metrics of one repetition, from its timestamps (see the module docstring)."""
    warm = sample.warmup_iterations
    window = sample.t_iterations[-1] - sample.t_iterations[warm - 1]
    metrics = {
        "iterations_per_s": (len(sample.t_iterations) - warm) / window,
        "trained_tps": sum(sample.trained_tokens[warm:]) / window,
        "peak_memory": float(sample.peak_memory),
    }
    if sample.process_peak_memory is not None:
        metrics["process_peak_memory"] = float(sample.process_peak_memory)
    points = sample.resident[warm - 1 :]
    if len(points) >= 2:
        slope, _ = statistics.linear_regression(range(len(points)), points)
        metrics["memory_growth"] = slope / points[0]
    if sample.swap:
        metrics["swap_memory"] = float(sample.swap)
    return metrics


# --------------------------------------------------------------------------- dataset

_WORDS = (  # noqa: SIM905 - a paragraph reads better than 180 quoted words
    "the of and to in is that for it with as was on be by at this from have or one had not "
    "but what all were when we there can an your which their said if do will each about how "
    "up out them then she many some so these would other into has more her two like him see "
    "time could no make than first been its who now people my made over did down only way "
    "find use may water long little very after words called just where most know get through "
    "back much before go good new write our used me man too any day same right look think "
    "also around another came come work three word must because does part even place well "
    "such here take why things help put years different away again off went old number great "
    "tell men say small every found still between name should home big give air line set own "
    "under read last never us left end along while might next sound below saw something"
).split()


def _sentence_text(rng: random.Random, n_words: int) -> str:
    """About ``n_words`` common English words (about one token each in BPE vocabularies) in
    sentences of 6-15 words."""
    sentences = []
    left = n_words
    while left > 0:
        k = min(left, rng.randint(6, 15))
        words = [rng.choice(_WORDS) for _ in range(k)]
        sentences.append(" ".join(words).capitalize() + rng.choice(".?!"))
        left -= k
    return " ".join(sentences)


def make_dataset(
    path: Path, n: int = 64, kind: str = "chat", tokens: int = 200, seed: int = 0
) -> Path:
    """Write ``n`` generated examples in mlx-lm's ``chat`` (``{"messages": [...]}``) or
    ``completions`` (``{"prompt", "completion"}``) jsonl format and return the file.

    Deterministic for a given seed, so its content hash (the workload identity) is stable.
    Each example has about ``tokens`` words, a quarter in the user turn; the real token count
    depends on the tokenizer and chat template and is measured, never assumed. ``path`` is a
    ``.jsonl`` file, or a folder that gets ``train.jsonl``.
    """
    if kind not in ("chat", "completions"):
        raise ValueError(f"kind must be 'chat' or 'completions', not {kind!r}")
    if n < 1 or tokens < 8:
        raise ValueError(f"need n >= 1 and tokens >= 8 (got n={n}, tokens={tokens})")
    file = Path(path) if Path(path).suffix == ".jsonl" else Path(path) / "train.jsonl"
    file.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        prompt = _sentence_text(rng, tokens // 4)
        answer = _sentence_text(rng, tokens - tokens // 4)
        if kind == "chat":
            record: dict[str, Any] = {
                "messages": [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": answer},
                ]
            }
        else:
            record = {"prompt": prompt, "completion": answer}
        lines.append(json.dumps(record))
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return file


class _ChatTemplateFallback:
    """A tokenizer that passes ``FALLBACK_CHAT_TEMPLATE`` to ``apply_chat_template``; every
    other attribute is the wrapped tokenizer's (which is left unchanged)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)

    def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
        return self._tokenizer.apply_chat_template(
            *args, chat_template=FALLBACK_CHAT_TEMPLATE, **kwargs
        )


def load_dataset(tokenizer: TokenizerWrapper, workload: FinetuneWorkload) -> Any:
    """The workload's training set as mlx-lm's ``CacheDataset``, every example tokenized up
    front so that no tokenization happens inside a timed iteration. A tokenizer without a chat
    template (synthetic models) gets ``FALLBACK_CHAT_TEMPLATE`` for chat and completions data."""
    import types

    from mlx_lm.tuner.datasets import CacheDataset, create_dataset

    if not tokenizer.has_chat_template:
        tokenizer = _ChatTemplateFallback(tokenizer)
    file = workload.train_file
    with file.open(encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    if len(records) < workload.batch_size:
        raise ValueError(
            f"dataset {str(file)!r} has {len(records)} examples; batch_size "
            f"{workload.batch_size} needs at least that many"
        )
    dataset = CacheDataset(create_dataset(records, tokenizer, types.SimpleNamespace()))
    for i in range(len(dataset)):
        dataset[i]
    return dataset


# --------------------------------------------------------------------------- training


def _check_mlx_lm() -> None:
    """Refuse, with the reason and the install command, an mlx-lm whose trainer this module
    cannot drive: what it needs is not installed (a test skips, as for a missing backend)."""
    from importlib.metadata import version

    from pytest_mlxperf.backends import BackendUnavailable

    found = below({"mlx-lm": version("mlx-lm")}, "mlx-lm", MIN_MLX_LM)
    if found is not None:
        raise BackendUnavailable(
            f"fine-tuning measurements need mlx-lm >= {MIN_MLX_LM} (its trainer runs without a "
            f'validation set and seeds its batches); found mlx-lm {found}: pip install "mlx-lm>='
            f'{MIN_MLX_LM}"'
        )


class _Recorder:
    """mlx-lm training callback: a timestamp and mlx-lm's counters after every iteration
    (``steps_per_report=1``)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.trained: list[int] = []
        self.step_seconds: list[float] = []
        self.losses: list[float] = []
        self.resident: list[int] = []

    def on_train_loss_report(self, info: dict[str, Any]) -> None:
        self.stamps.append(time.perf_counter())
        self.resident.append(memory.usage()[0])
        self.trained.append(int(info["trained_tokens"]))
        self.step_seconds.append(1.0 / float(info["iterations_per_second"]))
        self.losses.append(float(info["train_loss"]))

    def on_val_loss_report(self, info: dict[str, Any]) -> None:
        """Unused: repetitions train without a validation set."""


@contextlib.contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
    """Undo what a LoRA run does to ``model``: the LoRA wrappers are replaced by the original
    layers, the training flag is restored, and the class of the transformer blocks gets back
    the ``__call__`` that mlx-lm's ``grad_checkpoint`` replaces (for *all* instances of the
    class, for the rest of the process)."""
    from mlx.utils import tree_unflatten

    before = dict(model.named_modules())
    block = type(model.layers[0])
    had_call = "__call__" in vars(block)
    call = vars(block).get("__call__")
    training = model.training
    try:
        yield
    finally:
        if had_call:
            block.__call__ = call
        elif "__call__" in vars(block):
            del block.__call__
        after = dict(model.named_modules())
        changed = [(name, m) for name, m in before.items() if after.get(name) is not m]
        if changed:
            model.update_modules(tree_unflatten(changed))
        model.train(training)
        gc.collect()


def run_finetune(
    model: nn.Module, tokenizer: TokenizerWrapper, workload: FinetuneWorkload
) -> FinetuneSample:
    """One repetition: fresh LoRA adapters (QLoRA on a quantized model) and a fresh Adam
    optimizer on the frozen base, trained by ``mlx_lm.tuner.trainer.train`` for
    ``warmup_iterations + iterations`` steps; the model is restored afterwards.

    Raises ``MeasurementError`` when the trainer did not do the work asked for.
    """
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten
    from mlx_lm.tuner import trainer
    from mlx_lm.tuner.utils import linear_to_lora_layers

    _check_mlx_lm()
    dataset = load_dataset(tokenizer, workload)
    total = workload.warmup_iterations + workload.iterations
    recorder = _Recorder()
    shapes: list[tuple[int, int]] = []

    def batches(**kwargs: Any) -> Iterator[tuple[Any, Any]]:
        for batch, lengths in trainer.iterate_batches(seed=workload.seed, **kwargs):
            shapes.append((batch.shape[0], batch.shape[1]))
            yield batch, lengths

    with _restored(model), tempfile.TemporaryDirectory(prefix="mlxperf-lora-") as tmp:
        args = trainer.TrainingArgs(
            batch_size=workload.batch_size,
            iters=total,
            steps_per_report=1,
            steps_per_eval=total + 1,
            steps_per_save=total + 1,
            max_seq_length=workload.max_seq_length,
            adapter_file=str(Path(tmp) / "adapters.safetensors"),
            grad_checkpoint=workload.grad_checkpoint,
        )
        mx.random.seed(workload.seed)
        active = mlx_memory.active(mx)
        mlx_memory.reset_peak(mx)
        memory.reset_peak()
        t_start = time.perf_counter()
        model.freeze()
        linear_to_lora_layers(
            model,
            workload.num_layers,
            {"rank": workload.lora_rank, "scale": LORA_SCALE, "dropout": LORA_DROPOUT},
        )
        trainable = sum(p.size for _, p in tree_flatten(model.trainable_parameters()))
        # the trainer's progress display and per-batch warnings would otherwise print
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.train(
                model,
                optim.Adam(learning_rate=workload.learning_rate),
                dataset,
                args=args,
                iterate_batches=batches,
                training_callback=recorder,
            )
        t_end = time.perf_counter()
        peak = mlx_memory.peak(mx)
        process_peak = memory.peak()
    if len(recorder.stamps) != total or len(shapes) != total:
        raise MeasurementError(
            f"mlx-lm's trainer reported {len(recorder.stamps)} iterations on {len(shapes)} "
            f"batches, but {total} were requested"
        )
    if any(seqs != workload.batch_size for seqs, _ in shapes):
        raise MeasurementError(
            f"batches of {sorted({s for s, _ in shapes})} sequences were trained, but "
            f"batch_size is {workload.batch_size}"
        )
    n_layers = len(model.layers)
    return FinetuneSample(
        t_start=t_start,
        t_iterations=recorder.stamps,
        t_end=t_end,
        warmup_iterations=workload.warmup_iterations,
        trained_tokens=[b - a for a, b in itertools.pairwise([0, *recorder.trained])],
        batch_sequences=[s for s, _ in shapes],
        padded_lengths=[n for _, n in shapes],
        step_seconds=recorder.step_seconds,
        losses=recorder.losses,
        peak_memory=peak,
        active_memory=active,
        trainable_parameters=int(trainable),
        lora_layers=n_layers if workload.num_layers == -1 else min(workload.num_layers, n_layers),
        resident=recorder.resident,
        process_peak_memory=process_peak,
        swap=memory.usage()[1],
    )


def _default_identity(model: nn.Module) -> dict[str, Any]:
    """A small model identity when none is given: architecture, parameter count (as mlx-lm
    counts it, quantized weights unpacked) and the bit widths of quantized layers. It has no
    content hash: pass ``MLXModel.identity`` where results are compared with baselines."""
    from mlx_lm.utils import get_total_parameters

    bits = sorted({m.bits for _, m in model.named_modules() if hasattr(m, "bits")})
    return {
        "backend": "mlx",
        "name": getattr(model, "model_type", type(model).__module__.rsplit(".", 1)[-1]),
        "parameters": get_total_parameters(model),
        "bits": bits or None,
    }


def measure_finetune(
    model: nn.Module,
    tokenizer: TokenizerWrapper,
    workload: FinetuneWorkload,
    *,
    warmup: int = 1,
    repetitions: int = 3,
    identity: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> Measurement:
    """``warmup`` untimed repetitions, then ``repetitions`` timed ones, each a fresh LoRA run
    (``run_finetune``), as the project's ``Measurement`` (backend "mlx"; ``identity`` is the
    model's, e.g. ``MLXModel.identity``, else a small one made from the model); ``progress``
    hears of each repetition."""

    def account(sample: FinetuneSample) -> tuple[int, str]:
        metrics = derive_finetune_metrics(sample)
        rate = f"{metrics['iterations_per_s']:.2f} it/s, {metrics['trained_tps']:.1f} trained tok/s"
        return sum(sample.trained_tokens), rate

    raws, wall_time = Repetitions(warmup, repetitions).run(
        lambda: run_finetune(model, tokenizer, workload), progress, account
    )
    per_rep = [derive_finetune_metrics(raw) for raw in raws]
    return Measurement(
        backend="mlx",
        model=identity if identity is not None else _default_identity(model),
        workload=workload,
        samples={name: [rep[name] for rep in per_rep] for name in per_rep[0]},
        raw=raws,
        warmup=warmup,
        wall_time=wall_time,
    )
