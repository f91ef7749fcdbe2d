"""Dependency pins that the code relies on, checked against pyproject.toml and what is installed."""
from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def _requirement(name: str) -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return next(r for r in map(Requirement, project["dependencies"]) if r.name == name)


def test_granian_is_pinned_below_its_next_major():
    """gateway/lifecycle/drain.py uses granian's internals: a new major must be a deliberate upgrade."""
    spec = _requirement("granian").specifier
    installed = Version(version("granian"))
    assert installed in spec  # what the tests run against is allowed
    assert Version(f"{installed.major + 1}.0") not in spec
    assert Version(f"{installed.major + 1}.0.0rc1") not in SpecifierSet(str(spec), prereleases=True)


def test_jsonschema_has_the_referencing_registry():
    """core/guardrails/json_schema.py passes `registry=` (no retrieval) so a client's schema never
    makes the gateway fetch a URL: below 4.18 there is no registry and RefResolver fetches."""
    spec = _requirement("jsonschema").specifier
    assert Version(version("jsonschema")) in spec
    assert Version("4.17.3") not in spec and Version("5.0") not in spec
