"""Shared fixtures: where the real maps live (../shared/maps beside the checkout)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_maps_dir() -> Path:
    return Path(os.environ.get("CORDON_SHARED_MAPS", ROOT.parent / "shared" / "maps"))


@pytest.fixture(scope="session")
def shared_maps() -> Path:
    """The real maps. Missing maps fail loudly: they are part of the test contract."""
    path = shared_maps_dir()
    if not (path / "harrisburg.osm.bz2").exists():
        pytest.fail(f"real maps not found at {path} (set CORDON_SHARED_MAPS)")
    return path
