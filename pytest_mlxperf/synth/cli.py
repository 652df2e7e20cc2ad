"""The ``mlxperf synth`` subcommand: build synthetic models ahead of a test run and show them.

Building models up front (a CI step, tox's ``synth`` environment) keeps build time out of the
measured session and lets one environment build what a matrix of backend versions measures. For
each artifact it prints the path, whether this run built it or found it in the cache, and its
size on disk; ``--list`` shows the presets with their parameter counts.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from pytest_mlxperf.synth.cache import CACHE_ENV, default_cache_dir
from pytest_mlxperf.synth.errors import SynthError
from pytest_mlxperf.synth.gguf_convert import build_gguf
from pytest_mlxperf.synth.mlx_convert import MLX_DTYPES, MLX_QUANTS, build_mlx
from pytest_mlxperf.synth.shapes import PRESETS


def disk_size(path: Path) -> int:
    """Bytes on disk of a model file or of every file in a model folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def human_size(n: float) -> str:
    """Bytes for people: 1234567 -> '1.23 MB' (powers of 1000, as mlx-lm reports sizes)."""
    if n < 1000:
        return f"{n:.0f} B"
    exp = min(int(math.log10(n) // 3), 4)
    return f"{n / 1000**exp:.2f} {' KMGT'[exp]}B"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synth`` subcommand to the ``mlxperf`` command."""
    parser = subparsers.add_parser(
        "synth",
        help="build cached synthetic models (offline, random weights)",
        description="Build random-weight models of a preset shape for MLX and llama.cpp. "
        "Without --mlx/--gguf: MLX 4bit and GGUF Q4_K_M.",
    )
    parser.add_argument("preset", nargs="?", default="tiny", help="shape preset (see --list)")
    parser.add_argument(
        "--mlx",
        action="append",
        default=[],
        metavar="QUANT",
        help=f"MLX quantization, repeatable: {', '.join(MLX_QUANTS)}",
    )
    parser.add_argument(
        "--gguf",
        action="append",
        default=[],
        metavar="QUANT",
        help="GGUF quantization, repeatable: F32, F16, Q8_0, Q4_0, Q4_K_M, ...",
    )
    parser.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"cache root (default ${CACHE_ENV} or {default_cache_dir()})",
    )
    parser.add_argument("--group-size", type=int, default=64, help="MLX group size (64)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=MLX_DTYPES,
        help="MLX dtype of the tensors that stay unquantized (float32)",
    )
    parser.add_argument(
        "--allow-fallback",
        action="store_true",
        help="accept llama.cpp's fallback types for rows K-quants cannot hold",
    )
    parser.add_argument("--list", action="store_true", help="list the presets and exit")
    parser.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    """Run ``mlxperf synth``: print path, build time (or "cached") and size per artifact."""
    if args.list:
        print(f"{'preset':<14} {'arch':<6} {'params':>9} {'hidden':>6} {'layers':>6} {'vocab':>7}")
        for name, s in PRESETS.items():
            params = s.param_count()
            count = f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.1f}M"
            print(
                f"{name:<14} {s.arch:<6} {count:>9} "
                f"{s.hidden_size:>6} {s.num_hidden_layers:>6} {s.vocab_size:>7}"
            )
        return 0
    jobs: list[tuple[str, str]] = [("mlx", q) for q in args.mlx] + [("gguf", q) for q in args.gguf]
    try:
        for backend, quant in jobs or [("mlx", "4bit"), ("gguf", "Q4_K_M")]:
            start = time.perf_counter()
            common = {"seed": args.seed, "cache_dir": args.cache_dir}
            if backend == "mlx":
                path, built = build_mlx(
                    args.preset, quant, group_size=args.group_size, dtype=args.dtype, **common
                )
            else:
                path, built = build_gguf(
                    args.preset, quant, allow_fallback=args.allow_fallback, **common
                )
            status = f"built {time.perf_counter() - start:.1f}s" if built else "cached"
            print(
                f"{backend:<4} {quant:<7} {status:>13} {human_size(disk_size(path)):>10}  {path}",
                flush=True,
            )
    except (SynthError, OSError) as exc:
        print(f"mlxperf synth: error: {exc}", file=sys.stderr)
        return 2
    return 0
