"""Fixtures that hand each storage test every engine in turn (see storage_harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from storage_harness import DISK_ENGINE_KINDS, ENGINE_KINDS, StoreFactory

from dynastore.storage import Engine


@pytest.fixture(params=ENGINE_KINDS)
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    return StoreFactory(request.param, tmp_path)


@pytest.fixture(params=DISK_ENGINE_KINDS)
def disk_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    return StoreFactory(request.param, tmp_path)


@pytest.fixture
def engine(factory: StoreFactory) -> Iterator[Engine]:
    opened = factory.open()
    try:
        yield opened
    finally:
        opened.close()
