"""Fixtures for tests that run real node processes on loopback; every process is killed afterwards."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cluster_settings import FAST

from dynastore.localcluster import LocalCluster


@pytest.fixture
def make_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[object]:
    clusters: list[LocalCluster] = []

    def make(count: int, *overrides: str, start: bool = True) -> LocalCluster:
        cluster = LocalCluster(tmp_path / f"cluster{len(clusters)}", count, overrides=FAST + overrides)
        clusters.append(cluster)
        if start:
            cluster.start()
            cluster.wait_ready(60)
        return cluster

    yield make
    failed = getattr(request.node, "rep_call", None)
    for cluster in clusters:
        if failed is not None and failed.failed:
            print(cluster.logs(60))
        cluster.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, "rep_" + report.when, report)
