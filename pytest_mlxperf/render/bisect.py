"""A bisect's outcome for people: the table ``mlxperf bisect`` prints, and the Markdown snippet
for an upstream issue (the finding, the table, the machine, what was held fixed, the command)."""

from __future__ import annotations

from pytest_mlxperf.gates.bisect import BisectResult
from pytest_mlxperf.render.text import aligned


def bisect_table(result: BisectResult) -> str:
    """Every tested version in release order: its outcome and the change of each followed
    metric."""
    names = list(result.followed)
    rows = [
        [t.version, t.outcome, *(t.changes.get(n, "") for n in names), t.note]
        for t in result.in_order()
    ]
    short = [n.split("::")[-1] for n in names]
    return aligned(["version", "outcome", *short, "note"], rows)


def bisect_markdown(result: BisectResult, machine: str, command: str, held: str) -> str:
    """A snippet for an upstream issue: the finding, the table, the machine, what was held
    fixed, and the command that reproduces it."""
    followed = ", ".join(f"`{n}` ({v} at {result.bad})" for n, v in result.followed.items())
    lines = [
        f"**{result.summary()}.**",
        "",
        f"Followed: {followed}",
        "",
        "| version | outcome | "
        + " | ".join(f"`{n.split(' ')[-1]}`" for n in result.followed)
        + " |",
        "|---|---|" + "---:|" * len(result.followed),
    ]
    for t in result.in_order():
        cells = " | ".join(t.changes.get(n, "") for n in result.followed)
        lines.append(f"| {t.version} | {t.outcome} | {cells} |")
    lines += [
        "",
        f"Machine: `{machine}`. Held fixed in every environment: {held}. Each version "
        f"judged against {result.package} {result.good} by an interleaved A/B run (fresh "
        "processes, rounds alternating, per-process medians paired by round, 99% CI).",
        "",
        f"Reproduce: `{command}`",
    ]
    return "\n".join(lines) + "\n"
