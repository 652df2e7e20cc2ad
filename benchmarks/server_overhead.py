"""What the HTTP path costs, and whether our server timings agree with the server's own.

1. Overhead: the same synthetic model and workload measured in-process (``measure``) and
   through the backend's own OpenAI-compatible server started by pytest-mlxperf
   (``mlx_lm.server``, llama-cpp-python's server), alternating round by round in one run; the
   ratio server / in-process of TTFT, prompt and generation tokens/s.
2. Agreement: llama.cpp's ``llama-server`` reports its own ``timings`` in every response; our
   prompt and generation tokens/s over HTTP against those figures (needs the binary built by
   ``benchmarks/build_llama_server.sh``; skipped without it).

    python benchmarks/server_overhead.py --rounds 5

Run it alone: two cores, and the server and the client share them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path

import httpx

from pytest_mlxperf import backends
from pytest_mlxperf.backends.sources import resolve
from pytest_mlxperf.measuring.measure import measure
from pytest_mlxperf.measuring.workload import Workload
from pytest_mlxperf.serving.bench import ServeWorkload, measure_server
from pytest_mlxperf.serving.launch import free_port
from pytest_mlxperf.serving.server import connect, serve

METRICS = ("ttft", "prompt_tps", "generation_tps")
MODELS = {"mlx": "synth:tiny@4bit", "llamacpp": "synth:tiny@Q4_K_M"}


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {m: statistics.median(samples[m]) for m in METRICS if m in samples}


def overhead(backend: str, rounds: int, reps: int, prompt: int, gen: int) -> None:
    model = backends.load(backend, MODELS[backend])
    server = serve(backend, MODELS[backend], timeout=120)
    ratios: dict[str, list[float]] = {m: [] for m in METRICS}
    inproc_all: dict[str, list[float]] = {m: [] for m in METRICS}
    http_all: dict[str, list[float]] = {m: [] for m in METRICS}
    try:
        for _ in range(rounds):
            local = medians(measure(model, Workload(prompt, gen), repetitions=reps).samples)
            remote = medians(
                measure_server(
                    server, ServeWorkload(prompt, gen, requests=1), repetitions=reps
                ).samples
            )
            for m in METRICS:
                ratios[m].append(remote[m] / local[m])
                inproc_all[m].append(local[m])
                http_all[m].append(remote[m])
    finally:
        server.close()
        model.close()
    print(f"\n{backend}: {MODELS[backend]} pp{prompt}+tg{gen}, {rounds} alternating rounds")
    print(f"{'metric':16} {'in-process':>12} {'server':>12} {'server/in-process':>18} range")
    for m in METRICS:
        r, local, remote = ratios[m], inproc_all[m], http_all[m]
        print(
            f"{m:16} {statistics.median(local):12.4g} {statistics.median(remote):12.4g}"
            f" {statistics.median(r):18.3f} {min(r):.3f}..{max(r):.3f}"
        )


def llama_server_binary() -> Path | None:
    cache = Path(os.environ.get("MLXPERF_CACHE_DIR", Path.home() / ".cache" / "pytest-mlxperf"))
    found = sorted(cache.glob("llama-server/*/llama-server"))
    return found[-1] if found else None


def agreement(rounds: int, reps: int, prompt: int, gen: int) -> None:
    binary = llama_server_binary()
    if binary is None:
        print("\nagreement: no llama-server (run benchmarks/build_llama_server.sh): skipped")
        return
    gguf = resolve("llamacpp", MODELS["llamacpp"]).path
    port = free_port()
    # one thread, one slot: as our in-process llama.cpp default on 2 cores
    command = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
    command += ["-c", "4096", "-t", "1", "-tb", "1", "-np", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        server = connect(url, timeout=120)
        ours: dict[str, list[float]] = {"prompt_tps": [], "generation_tps": []}
        theirs: dict[str, list[float]] = {"prompt_tps": [], "generation_tps": []}
        for _ in range(rounds):
            samples = measure_server(
                server, ServeWorkload(prompt, gen, requests=4), repetitions=reps
            ).samples
            for m in ours:
                ours[m] += samples[m]
                theirs[m] += samples["server_" + m]
        server.close()
    finally:
        process.terminate()
        process.wait(10)
    print(f"\nagreement with llama-server's own timings: {MODELS['llamacpp']} pp{prompt}+tg{gen}")
    print(f"{'metric':16} {'ours (HTTP)':>12} {'server says':>12} {'ours/server':>12}")
    for m in ours:
        a, b = statistics.median(ours[m]), statistics.median(theirs[m])
        print(f"{m:16} {a:12.4g} {b:12.4g} {a / b:12.3f}")
    print(f"(its identity: {server.identity}, tokenizer endpoint {server.tokenizer})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--gen", type=int, default=64)
    parser.add_argument("--only", choices=["mlx", "llamacpp", "agreement"])
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="BACKEND=SOURCE",
        help="another model for a backend, e.g. llamacpp=synth:llama-3.2-3b@Q4_K_M",
    )
    args = parser.parse_args()
    for spec in args.model:
        backend, _, source = spec.partition("=")
        if backend not in MODELS or not source:
            parser.error(f"--model {spec!r}: expected mlx=SOURCE or llamacpp=SOURCE")
        MODELS[backend] = source
    started = time.perf_counter()
    for backend in ("mlx", "llamacpp"):
        if args.only in (None, backend):
            overhead(backend, args.rounds, args.reps, args.prompt, args.gen)
    if args.only in (None, "agreement"):
        agreement(args.rounds, args.reps, args.prompt, args.gen)
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
