"""The pins CI installs and the floors pyproject.toml declares agree with each other, checked
offline: uv.lock was resolved from this pyproject.toml (a changed requirement needs
``tox -e lock``), requirements/lock.txt is uv.lock's export, and tox's ``lowest`` environment
installs every declared floor."""

from __future__ import annotations

import configparser
import sys
from collections.abc import Iterable
from typing import Any

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from tests.conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself requires tomli before Python 3.11
    import tomli as tomllib

PROJECT = "pytest-mlxperf"


def toml(name: str) -> dict[str, Any]:
    """A TOML file of the repository, parsed."""
    return tomllib.loads((REPO / name).read_text(encoding="utf-8"))


def declared() -> list[Requirement]:
    """Every requirement of pyproject.toml, its extras' too, less the project's own extras."""
    project = toml("pyproject.toml")["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines.extend(extra)
    return [r for r in map(Requirement, lines) if canonicalize_name(r.name) != PROJECT]


def floor(requirement: Requirement) -> str:
    """The version of a requirement's one ``>=`` bound: each declared requirement has one."""
    (bound,) = (s.version for s in requirement.specifier if s.operator == ">=")
    return bound


def shape(name: str, extras: Iterable[str], specifier: str) -> tuple[str, tuple[str, ...], str]:
    """What a requirement asks for, spelled alike in pyproject.toml and uv.lock."""
    return canonicalize_name(name), tuple(sorted(extras)), str(SpecifierSet(specifier))


def test_uv_lock_was_resolved_from_this_pyproject() -> None:
    (project,) = (p for p in toml("uv.lock")["package"] if p["name"] == PROJECT)
    recorded = sorted(
        shape(r["name"], r.get("extras", ()), r.get("specifier", ""))
        for r in project["metadata"]["requires-dist"]
        if r["name"] != PROJECT
    )
    wanted = sorted(shape(r.name, r.extras, str(r.specifier)) for r in declared())
    assert recorded == wanted, "uv.lock is stale: run `tox -e lock`"


def test_requirements_lock_txt_pins_exactly_the_versions_of_uv_lock() -> None:
    exported = set()
    for line in (REPO / "requirements" / "lock.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            pin = Requirement(line)
            (spec,) = pin.specifier
            assert spec.operator == "==", line
            exported.add((canonicalize_name(pin.name), spec.version))
    locked = {
        (canonicalize_name(p["name"]), p["version"])
        for p in toml("uv.lock")["package"]
        if p["name"] != PROJECT
    }
    assert exported == locked, "requirements/lock.txt is not uv.lock's export: run `tox -e lock`"


def test_the_lowest_environment_pins_every_declared_floor() -> None:
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(REPO / "tox.ini", encoding="utf-8")
    pins = {
        (canonicalize_name(r.name), tuple(sorted(r.extras)), str(r.marker)): r.specifier
        for r in map(Requirement, tox["testenv:lowest"]["deps"].split("\n")[1:])
    }
    missing = [
        f"{r}: lowest has {pin or 'no pin'}"
        for r in declared()
        if (pin := pins.get((canonicalize_name(r.name), tuple(sorted(r.extras)), str(r.marker))))
        != SpecifierSet(f"=={floor(r)}")
    ]
    assert not missing, "tox.ini [testenv:lowest] does not pin these floors:\n" + "\n".join(missing)
