"""The machine's identity (CPU family, model, stepping and ISA digest on Linux; the chip and
hardware model on macOS, both read from inputs given as arguments so either path runs on any
system) and its speed canary (the kernels, and when a change of its speed says the machine
changed)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pytest_mlxperf.host import machine
from pytest_mlxperf.stats.canary import (
    CANARY_METRICS,
    canary_shifts,
    describe_shift,
    pooled_canary,
    run_canary,
)

FLAGS_ZEN4 = (
    "fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c bmi1 bmi2 avx512f avx512bw "
    "avx512vl avx512_vnni avx512_bf16 hypervisor cpuid ssbd ibpb"
)


def cpuinfo(family: int, model: int, stepping: int, flags: str, processors: int = 2) -> str:
    """The text of ``/proc/cpuinfo`` of an x86 VM that hides the CPU's name."""
    block = (
        "processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\n"
        "model\t\t: {model}\nmodel name\t: AMD EPYC\nstepping\t: {stepping}\n"
        "cpu MHz\t\t: 2596.134\nflags\t\t: {flags}\n\n"
    )
    return "".join(
        block.format(n=n, family=family, model=model, stepping=stepping, flags=flags)
        for n in range(processors)
    )


ZEN4 = cpuinfo(25, 17, 1, FLAGS_ZEN4)
ZEN5 = cpuinfo(26, 2, 0, FLAGS_ZEN4 + " avx512_vp2intersect")
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp sve i8mm bf16
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd40
CPU revision\t: 1
"""


def test_linux_cpus_that_share_a_name_get_different_machine_ids() -> None:
    zen4 = machine.fingerprint(system="Linux", cpuinfo=ZEN4)
    zen5 = machine.fingerprint(system="Linux", cpuinfo=ZEN5)
    assert zen4["cpu"] == zen5["cpu"] == "AMD EPYC"
    assert (zen4["cpu_family"], zen4["cpu_model_id"], zen4["cpu_stepping"]) == ("25", "17", "1")
    assert (zen5["cpu_family"], zen5["cpu_model_id"], zen5["cpu_stepping"]) == ("26", "2", "0")
    assert machine.machine_id(zen4) != machine.machine_id(zen5)
    assert machine.machine_id(zen4) == machine.machine_id(
        machine.fingerprint(system="Linux", cpuinfo=ZEN4)
    )


def test_isa_digest_tells_instruction_sets_apart_and_ignores_the_rest() -> None:
    base = machine.linux_cpu_detail(ZEN4)["isa"]
    assert isinstance(base, str) and len(base) == 12
    # an ISA extension more: another digest, all else equal
    assert machine.linux_cpu_detail(cpuinfo(25, 17, 1, FLAGS_ZEN4 + " amx_tile"))["isa"] != base
    # order, duplicates and flags a kernel or hypervisor sets (mitigations) do not count
    shuffled = " ".join(reversed(FLAGS_ZEN4.split())) + " avx2 md_clear flush_l1d"
    assert machine.linux_cpu_detail(cpuinfo(25, 17, 1, shuffled))["isa"] == base
    assert machine.isa_digest(["hypervisor", "ssbd"]) is None


def test_arm_linux_fields_stand_in() -> None:
    detail = machine.linux_cpu_detail(ARM)
    assert detail["cpu_family"] == "0x41" and detail["cpu_model_id"] == "0xd40"
    assert detail["cpu_stepping"] == "1"
    without_sve = ARM.replace(" sve", "")
    assert machine.linux_cpu_detail(without_sve)["isa"] not in (None, detail["isa"])


def test_no_cpuinfo_gives_empty_detail_not_an_error() -> None:
    assert machine.linux_cpu_detail("") == {
        "cpu_family": None,
        "cpu_model_id": None,
        "cpu_stepping": None,
        "isa": None,
    }


def test_macos_fingerprint_has_the_chip_and_the_hardware_model() -> None:
    answers = {"machdep.cpu.brand_string": "Apple M2 Pro", "hw.model": "Mac14,10"}
    fields = machine.cpu_fields("Darwin", sysctl=lambda name: answers.get(name, ""))
    assert fields == {"cpu": "Apple M2 Pro", "hw_model": "Mac14,10"}
    assert machine.cpu_fields("Darwin", sysctl=lambda name: "")["hw_model"] is None


def test_named_machine_override_is_unchanged() -> None:
    assert machine.fingerprint("ci-runners", system="Linux", cpuinfo=ZEN4) == {"name": "ci-runners"}
    assert machine.machine_id({"name": "ci-runners"}) == "ci-runners"


def test_an_older_fingerprint_is_recognized_by_what_it_lacks() -> None:
    new = machine.fingerprint(system="Linux", cpuinfo=ZEN4)
    old = {k: v for k, v in new.items() if k not in machine.CPU_DETAIL["Linux"]}
    assert machine.missing_cpu_detail(old, new) == list(machine.CPU_DETAIL["Linux"])
    assert machine.missing_cpu_detail(new, new) == []
    assert machine.missing_cpu_detail({"name": "box"}, new) == []
    assert machine.missing_cpu_detail(new, {"name": "box"}) == []


def test_the_cli_prints_the_new_fingerprint() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pytest_mlxperf.cli", "machine", "--json", "--no-smoke"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    shown = json.loads(out.stdout)
    assert shown["machine_id"] == machine.machine_id(shown["fingerprint"])
    for key in machine.CPU_DETAIL.get(shown["fingerprint"]["system"], ()):
        assert key in shown["fingerprint"]


def test_the_canary_times_both_kernels() -> None:
    samples = run_canary(trials=2)
    assert set(samples) == set(CANARY_METRICS)
    assert all(len(s) == 2 and all(0 < v < 5 for v in s) for s in samples.values())


STEADY = {
    "canary_compute": [0.0110, 0.0111, 0.0109, 0.0112, 0.0110],
    "canary_memory": [0.0100, 0.0104, 0.0098, 0.0101, 0.0103],
}


def scaled(canary: dict[str, list[float]], kernel: str, factor: float) -> dict[str, list[float]]:
    return {k: [v * factor for v in s] if k == kernel else s for k, s in canary.items()}


def test_canary_within_its_noise_is_no_shift() -> None:
    assert canary_shifts(STEADY, STEADY) == []
    # 5% slower compute, 20% slower memory: both inside their tolerances
    noisy = scaled(scaled(STEADY, "canary_compute", 1.05), "canary_memory", 1.2)
    assert canary_shifts(STEADY, noisy) == []


def test_canary_beyond_its_noise_is_a_shift_in_either_direction() -> None:
    faster = scaled(STEADY, "canary_compute", 1 / 1.92)
    (shift,) = canary_shifts(STEADY, faster)
    assert shift.metric.name == "canary_compute"
    text = describe_shift(shift)
    assert text.startswith("canary compute 1.92x faster than when the baseline was recorded")
    assert shift.p_value is not None and shift.p_value < 0.05
    assert f"p={shift.p_value:.3g}, n=5/5)" in text
    (shift,) = canary_shifts(STEADY, scaled(STEADY, "canary_memory", 2.5))
    assert describe_shift(shift).startswith("canary memory 2.50x slower")
    # memory bandwidth's own tail: 1.6x slower between two sessions of one machine is no shift
    assert canary_shifts(STEADY, scaled(STEADY, "canary_memory", 1.6)) == []


@pytest.mark.parametrize("current", [None, {}, {"canary_compute": STEADY["canary_compute"]}])
def test_canary_missing_on_either_side_is_not_judged(current: dict | None) -> None:
    assert canary_shifts({}, STEADY) == []
    assert canary_shifts(STEADY, current) == []


def test_pooled_canary_skips_runs_without_one_and_bad_values() -> None:
    runs = [
        {"samples": {}},  # recorded before the canary existed
        {"canary": None},
        {"canary": STEADY},
        {"canary": {"canary_compute": [0.011, -1.0], "unknown_kernel": [1.0], "canary_memory": 3}},
        {"canary": {"canary_compute": [0.012]}},
    ]
    assert pooled_canary(runs) == {
        "canary_compute": [*STEADY["canary_compute"], 0.012],
        "canary_memory": STEADY["canary_memory"],
    }
