"""The floors pyproject.toml claims are the versions CI tests: .ci/run's `.venv-oldest` job pins
each dependency at its floor (a release of the floor's series: torch>=2.4 -> torch==2.4.1 is fine,
torch==2.13.0 is not), and README states the same torch floor."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.match(r"\d+(\.\d+)*", text).group(0).split("."))


def claimed_floors() -> dict[str, tuple[int, ...]]:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {}
    for spec in dependencies:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([\d.]+)", spec)
        assert match, f"pyproject.toml: {spec!r} has no plain '>=' floor to test"
        floors[match.group(1).lower()] = _version(match.group(2))
    return floors


def oldest_job_pins() -> dict[str, tuple[int, ...]]:
    script = (REPO / ".ci" / "run").read_text().replace("\\\n", " ")
    [install] = [line for line in script.splitlines()
                 if line.startswith(".venv-oldest/bin/python -m pip install") and "==" in line]
    return {name.lower(): _version(version) for name, version in re.findall(r"([A-Za-z0-9_.-]+)==([\d.]+)", install)}


def test_the_oldest_job_installs_every_claimed_floor():
    floors, pins = claimed_floors(), oldest_job_pins()
    assert set(pins) == set(floors), "pin exactly the dependencies pyproject.toml lists"
    for name, floor in floors.items():
        assert pins[name][: len(floor)] == floor, f"{name}: pyproject claims >= {floor}, CI tests {pins[name]}"


def test_readme_states_the_tested_torch_floor():
    floor = ".".join(map(str, claimed_floors()["torch"]))
    assert f"PyTorch >= {floor}" in (REPO / "README.md").read_text()


def test_version_parsing():
    assert _version("2.4.1+cu121") == (2, 4, 1) and _version("10.0") == (10, 0)
