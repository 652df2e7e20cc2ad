"""Every Python example in README.md runs as written: each ```python block becomes a test
module of its own, and the suite of them passes under ``--mlxperf`` on the project's machine
(new baselines pass; a block that is not a complete module fails here)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO

PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_examples(markdown: str) -> list[str]:
    """The code of every ```python block, in order."""
    return PYTHON_BLOCK.findall(markdown)


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
