"""Which llama.cpp build ran, as the loaded library reports it, and the known crash of its AMX
kernels.

The same llama-cpp-python version runs at very different speeds depending on how llama.cpp was
compiled (AVX2 or AVX-512, AMX) and where the weights went at load (repacked into an
interleaved ``CPU_REPACK`` or ``AMX`` buffer, or left as mapped). pip's wheel cache even carries
a native build from one CPU to another, so the version alone does not say which build ran.
What a build is: the feature line of ``llama_print_system_info()`` and the buffer types of
llama.cpp's load log (``load_tensors: CPU_REPACK model buffer size = ...``). Both are
provenance, like a version (``packages.versions``): an upgrade of the build is what the A/B gate
compares on purpose, and the machine's own CPU is already in its fingerprint.

Nothing here imports llama_cpp: the facts are text, read in the process that loaded it (a
worker, a server's log) and judged anywhere.
"""

from __future__ import annotations

import re
import signal as signals
from collections.abc import Iterable, Mapping
from typing import Any

PACKAGE = "llama-cpp-python"
# a build's feature line: "CPU : SSE3 = 1 | AVX2 = 1 | ... | REPACK = 1 |" (one per backend)
_FEATURE = re.compile(r"([A-Za-z0-9_]+) = ([^|]+)")
_SECTION = re.compile(r"(?:^|\|)\s*([A-Za-z0-9_]+) :")
_BUFFER = re.compile(r"load_tensors:\s+(\S+) model buffer size")
# the x86 and Arm tiers a build's label names, best first: one is enough to tell builds apart
_TIERS = ("AVX512", "AVX2", "AVX", "SSE3", "SVE", "NEON")
# the signals llama.cpp's AMX kernels die by on virtualized Sapphire Rapids class CPUs
CRASH_SIGNALS = frozenset({signals.SIGSEGV, signals.SIGILL, signals.SIGBUS})
NO_AMX_CMAKE = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON '
    "-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON "
    '-DGGML_AVX_VNNI=ON" pip install --force-reinstall --no-cache-dir --no-binary '
    "llama-cpp-python llama-cpp-python"
)


def is_system_info(line: str) -> bool:
    """Whether ``line`` is the feature line ``llama_print_system_info()`` prints."""
    return bool(_SECTION.search(line)) and " = " in line and "|" in line


def features(system_info: str) -> list[str]:
    """The features a build has on (``AVX2 = 1``), in its own order, after the backends other
    than the CPU it was built with (a ``CUDA : ARCHS = 890`` section is ``CUDA``)."""
    on = [m.group(1) for m in _FEATURE.finditer(system_info) if m.group(2).strip() == "1"]
    sections = [s for s in _SECTION.findall(system_info) if s != "CPU"]
    return [*dict.fromkeys([*sections, *on])]


def buffer_types(log: Iterable[str]) -> list[str]:
    """The buffer types llama.cpp put the model's weights in, from its load log."""
    return [*dict.fromkeys(m.group(1) for line in log if (m := _BUFFER.search(line)))]


def build_facts(system_info: str, buffers: Iterable[str]) -> dict[str, Any]:
    """The record of a build: its feature line as printed, the features it has on, where the
    weights went (empty when unknown), and its ``label`` (what version lines show)."""
    facts: dict[str, Any] = {
        "system_info": system_info.strip(),
        "features": features(system_info),
        "buffers": list(buffers),
    }
    return {**facts, "label": label(facts)}


def facts_from_log(log: str) -> dict[str, Any] | None:
    """A build's facts from the output of a process that loaded llama.cpp verbosely (the log
    of llama-cpp-python's server); ``None`` when its feature line is not there."""
    lines = log.splitlines()
    info = next((line for line in lines if is_system_info(line)), None)
    return None if info is None else build_facts(info, buffer_types(lines))


def uses_amx(facts: Mapping[str, Any]) -> bool:
    """The weights went to llama.cpp's AMX buffer; where the buffers are not known, whether
    the build has AMX kernels (``AMX_INT8``) at all."""
    buffers = facts.get("buffers") or ()
    if buffers:
        return any("AMX" in b for b in buffers)
    return "AMX_INT8" in facts.get("features", ())


def label(facts: Mapping[str, Any]) -> str:
    """A short name of a build for version lines: its best CPU tier, AMX, and the other
    backends it was built with (``AVX512``, ``AVX2, AMX``, ``NEON, Metal``); ``no REPACK``
    where it cannot repack weights."""
    on = list(facts.get("features", ()))
    sections = [s for s in _SECTION.findall(str(facts.get("system_info", ""))) if s != "CPU"]
    parts = [
        *[t for t in _TIERS if t in on][:1],
        *(["AMX"] if "AMX_INT8" in on else []),
        *sections,
        *(["no REPACK"] if on and "REPACK" not in on else []),
    ]
    return ", ".join(parts) or "build unknown"


def crash_diagnosis(
    signal: int,
    facts: Mapping[str, Any] | None,
    repack: bool | None,
    cpu_flags: Iterable[str] = (),
) -> str | None:
    """What to say when a llama.cpp process died by ``signal`` (a number): the known crash
    of llama.cpp's AMX kernels and both remedies, where this build uses AMX (``facts``: the
    build the process loaded; where it died before it said, the CPU's ``cpu_flags`` stand in)
    and repacking was not turned off. ``None`` for any other crash."""
    if signal not in CRASH_SIGNALS or repack is False:
        return None
    amx = uses_amx(facts) if facts else "amx_int8" in set(cpu_flags)
    if not amx:
        return None
    return (
        "this looks like llama.cpp's known crash in its AMX kernels (ggml_backend_amx_mul_mat) "
        "on Intel Sapphire Rapids class CPUs, virtual machines especially (llama.cpp #20824, "
        "ollama #17249): the build uses AMX and the weights are repacked for it. Remedies: "
        "turn weight repacking off (--mlxperf-repack off, or mlxperf.load(..., repack=False); "
        "llama-server and llama-bench: --no-repack), or build llama-cpp-python without AMX: "
        + NO_AMX_CMAKE
    )
