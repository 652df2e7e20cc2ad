"""The workload of one measurement (inference, or LoRA fine-tuning), and its identity.

Everything that changes how much work is done, or how, is a field here and so part of the
identity a baseline is matched on: two results are compared only if their workloads are equal.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol


class WorkloadLike(Protocol):
    """What the session needs of any workload: a label for people, an identity to match."""

    @property
    def label(self) -> str: ...

    def identity(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Workload:
    """What one repetition does: prefill ``prompt_tokens`` on top of ``depth`` cached tokens,
    then decode exactly ``generation_tokens`` tokens (EOS disabled).

    Prompts are seeded random token ids unless ``prompt_file`` is given; then the prompt is the
    first ``prompt_tokens`` tokens of that text file.
    """

    prompt_tokens: int = 512
    generation_tokens: int = 128
    depth: int = 0
    temp: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    max_kv_size: int | None = None
    prefill_step: int | None = None
    flash_attn: bool | None = None
    threads: int | None = None
    n_gpu_layers: int | None = None
    prompt_file: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.prompt_tokens < 1:
            problems.append(f"prompt_tokens must be >= 1 (got {self.prompt_tokens})")
        if self.generation_tokens < 2:
            problems.append(
                f"generation_tokens must be >= 2 to time decoding (got {self.generation_tokens})"
            )
        if self.depth < 0:
            problems.append(f"depth must be >= 0 (got {self.depth})")
        if self.temp < 0:
            problems.append(f"temp must be >= 0 (got {self.temp})")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (got {self.top_p})")
        for name in ("max_kv_size", "prefill_step", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be >= 1 (got {value})")
        if self.prompt_file is not None and not Path(self.prompt_file).is_file():
            problems.append(f"prompt_file {self.prompt_file!r} does not exist")
        if problems:
            raise ValueError("invalid workload: " + "; ".join(problems))

    @property
    def total_tokens(self) -> int:
        """Tokens the KV cache must hold at the end of one repetition."""
        return self.depth + self.prompt_tokens + self.generation_tokens

    @property
    def label(self) -> str:
        """A llama-bench style label, e.g. ``pp512+tg128`` or ``pp512+tg128@d4096``."""
        label = f"pp{self.prompt_tokens}+tg{self.generation_tokens}"
        if self.prompt_file is not None:
            label = f"file:{Path(self.prompt_file).name}:" + label
        return label + (f"@d{self.depth}" if self.depth else "")

    def identity(self) -> dict[str, Any]:
        """The fields that must match for two results to be comparable (the prompt file by
        content hash, not path)."""
        ident = asdict(self)
        if self.prompt_file is not None:
            ident["prompt_file"] = hashlib.sha256(Path(self.prompt_file).read_bytes()).hexdigest()
        return ident

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class FinetuneWorkload:
    """What one fine-tuning repetition does; mirrors ``Workload`` (``identity()``, ``label``)
    so the session treats both alike.

    ``dataset`` is a jsonl file or a folder with ``train.jsonl`` in one of mlx-lm's formats
    (chat, completions, text); its content hash, not its path, is part of the identity.
    ``num_layers`` counts LoRA blocks from the top (all of them when the model has fewer;
    -1 = all). ``warmup_iterations`` run before the timed ``iterations`` in every repetition:
    the first compiles the training step, and a callback cannot see when it starts.
    """

    dataset: str
    iterations: int = 10
    batch_size: int = 4
    num_layers: int = 16
    grad_checkpoint: bool = False
    max_seq_length: int = 512
    lora_rank: int = 8
    learning_rate: float = 1e-5
    seed: int = 0
    warmup_iterations: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataset", str(self.dataset))
        problems = []
        for name in ("iterations", "batch_size", "lora_rank", "warmup_iterations"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.num_layers < 1 and self.num_layers != -1:
            problems.append(f"num_layers must be >= 1 or -1 for all (got {self.num_layers})")
        if self.max_seq_length < 2:
            problems.append(f"max_seq_length must be >= 2 (got {self.max_seq_length})")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate must be > 0 (got {self.learning_rate})")
        if not self.train_file.is_file():
            problems.append(
                f"dataset {self.dataset!r} is neither a jsonl file nor a folder with train.jsonl"
            )
        if problems:
            raise ValueError("invalid fine-tuning workload: " + "; ".join(problems))

    @property
    def train_file(self) -> Path:
        """The jsonl file ``dataset`` means: the file itself, or ``train.jsonl`` in a folder."""
        path = Path(self.dataset)
        return path / "train.jsonl" if path.is_dir() else path

    @property
    def label(self) -> str:
        """A short label like ``lora-b4-l16-s512`` (``lall`` for all layers, ``+gc`` with
        gradient checkpointing)."""
        layers = "all" if self.num_layers == -1 else str(self.num_layers)
        label = f"lora-b{self.batch_size}-l{layers}-s{self.max_seq_length}"
        return label + ("+gc" if self.grad_checkpoint else "")

    def identity(self) -> dict[str, Any]:
        """The fields that must match for two results to be comparable (the dataset by the
        sha256 of the training file's content, not its path)."""
        ident = asdict(self)
        ident["dataset"] = hashlib.sha256(self.train_file.read_bytes()).hexdigest()
        return ident
