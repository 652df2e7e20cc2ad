"""The public home of what a fine-tuning perf test imports: ``make_dataset`` (its measurement
lives in ``backends.finetune``, beside the MLX backend that runs it)."""

from __future__ import annotations

from pytest_mlxperf.backends.finetune import make_dataset

__all__ = ["make_dataset"]
