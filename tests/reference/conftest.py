"""The reference suite: torchvision (with its compiled ops) as the oracle.

Runs only in the reference venv (torch 2.14.1 + torchvision 0.29.1, see README and .ci/run):
    python -m pytest -q -m reference tests/reference
Every test here carries the `reference` marker, which the default run deselects; a module
imported without torchvision is skipped whole.
"""
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)  # before pytest's own hook deselects by marker
def pytest_collection_modifyitems(items):
    # a hook of this conftest still sees every collected item: mark only the ones below here
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.reference)
