"""pyproject.toml's ranges and requirements/cpu.lock agree, so library users get what the suite ran.

Each direct dependency (the dev extra included) must have an upper cap, the locked version must lie
in its range, and the cap must be at most the next minor release after the locked one: a range
that admits a minor release the suite never ran fails here until `make lock` has run it.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", re.MULTILINE)


def _direct() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    specs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return [Requirement(s) for s in specs]


def _locked() -> dict[str, Version]:
    text = (ROOT / "requirements" / "cpu.lock").read_text(encoding="utf-8")
    return {canonicalize_name(name): Version(version) for name, version in PINNED.findall(text)}


def _next_minor(version: Version) -> Version:
    return Version(f"{version.major}.{version.minor + 1}")


@pytest.mark.parametrize("req", _direct(), ids=lambda r: r.name)
def test_range_holds_the_locked_version_and_stops_at_the_next_minor(req):
    locked = _locked()
    name = canonicalize_name(req.name)
    assert name in locked, f"{req.name} is in pyproject.toml but not in requirements/cpu.lock: run `make lock`"
    version = locked[name]
    assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), f"{req}: no upper cap"
    assert req.specifier.contains(Version(version.base_version), prereleases=True), \
        f"{req} excludes the locked {version}: run `make lock`"
    assert not req.specifier.contains(_next_minor(version)), \
        f"{req} admits {_next_minor(version)}, newer than the locked {version}: lower the cap or run `make lock`"


def test_lock_pins_every_package_with_hashes():
    text = (ROOT / "requirements" / "cpu.lock").read_text(encoding="utf-8")
    blocks = [b for b in re.split(r"\n(?=[A-Za-z0-9])", text) if PINNED.match(b)]
    assert len(blocks) == len(_locked()) > 50
    assert all("--hash=sha256:" in b for b in blocks)
