"""Shared fixtures: small and generic (the repository root and its interpreter)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def python_exe() -> str:
    """The interpreter running the tests (it has numpy and onnxruntime)."""
    return sys.executable
