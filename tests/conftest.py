"""Fixtures shared by every test suite: the project's own layout, nothing more."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def project_root() -> Path:
    """The repository root: the folder holding manage.py."""
    return PROJECT_ROOT
