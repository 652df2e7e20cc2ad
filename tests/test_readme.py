"""Every Python example in README.md runs as written: each ```python block becomes a test
module of its own, and the suite of them passes under ``--mlxperf`` on the project's machine
(new baselines pass; a block that is not a complete module fails here). CI runs the README's
set-up commands, so what the README tells a newcomer is what CI proves."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO

PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_examples(markdown: str) -> list[str]:
    """The code of every ```python block, in order."""
    return PYTHON_BLOCK.findall(markdown)


def set_up_commands(markdown: str) -> list[str]:
    """The commands of the first ```bash block of the "## Set-up" section."""
    section = markdown.split("\n## Set-up\n", 1)[1].split("\n## ", 1)[0]
    block = BASH_BLOCK.search(section)
    assert block, "README.md's Set-up section has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_ci_runs_exactly_the_two_set_up_commands_of_the_readme() -> None:
    commands = set_up_commands((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(commands) == 2, commands  # one installs everything, one runs the suite
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert [line for line in ci if line.startswith("python3 ")] == commands


def test_python_blocks_are_found() -> None:
    text = "intro\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\n```\n"
    assert python_examples(text) == ["x = 1\n", "y = 2\n"]


@pytest.mark.usefixtures("synth_cache")
def test_every_python_example_in_the_readme_runs_as_written(pytester: pytest.Pytester) -> None:
    examples = python_examples((REPO / "README.md").read_text(encoding="utf-8"))
    assert examples, "README.md has no python examples"
    pytester.makepyfile(**{f"test_readme_example_{i}": code for i, code in enumerate(examples)})
    result = pytester.runpytest_subprocess("--mlxperf", "-rA")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) > 0, result.stdout.str()
    assert not {"failed", "errors", "error"} & set(outcomes), result.stdout.str()
