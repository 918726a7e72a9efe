"""Shared pytest fixtures."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`<repo>/../shared/data` (CI clones the repo next to `shared/`); missing is a failure."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.fail(f"shared data folder not found: {path} (expected next to the repository)")
    return path
