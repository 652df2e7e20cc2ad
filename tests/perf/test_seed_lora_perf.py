"""The seed's LoRA memory levers, ready to run: one short LoRA fine-tuning of Llama-3.2-3B per
lever, each changing one thing from mlx-lm's defaults (batch 4, 16 LoRA layers, no gradient
checkpointing, a 4-bit base: QLoRA): a smaller batch, fewer LoRA layers, gradient
checkpointing, and an unquantized base. Peak memory (allocator and process), memory growth and
training speed are gated for each.

Opt-in (a real 3B model trains for minutes per repetition, and fine-tuning runs all its
repetitions in one worker call, so raise the timeout)::

    pytest --mlxperf -m seed --mlxperf-timeout 7200 tests/perf/test_seed_lora_perf.py

Models: the 4-bit and bf16 ``mlx-community/Llama-3.2-3B-Instruct*`` from the local Hugging Face
cache when they are there, else synthetic ones of the same shape. On a CPU, use a small shape
and short sequences: ``MLXPERF_SEED_SHAPE=tiny MLXPERF_SEED_SEQ=64 MLXPERF_SEED_ITERATIONS=4``.
"""

import pytest

from pytest_mlxperf.finetune import make_dataset

pytestmark = pytest.mark.seed

DEFAULTS = {"batch_size": 4, "num_layers": 16, "grad_checkpoint": False}
LEVERS = {
    "defaults": ("mlx", {}),
    "batch-1": ("mlx", {"batch_size": 1}),
    "layers-4": ("mlx", {"num_layers": 4}),
    "grad-checkpoint": ("mlx", {"grad_checkpoint": True}),
    "unquantized-base": ("mlx-unquantized", {}),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, seed):
    """Chat examples longer than the sequence length, so that every batch is full."""
    folder = tmp_path_factory.mktemp("lora")
    return make_dataset(folder / "train.jsonl", n=64, tokens=seed.seq + seed.seq // 2)


@pytest.mark.parametrize("lever", list(LEVERS))
def test_seed_lora_lever(mlxperf, seed, dataset, lever):
    kind, change = LEVERS[lever]
    model = mlxperf.load("mlx", seed.model(kind))
    fields = {**DEFAULTS, **change, "max_seq_length": seed.seq, "iterations": seed.iterations}
    result = mlxperf.finetune(model, dataset, **fields)
    assert result.peak_memory > 0
