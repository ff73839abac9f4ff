"""Fixtures for fault tests: nodes in their own network namespaces, each with its own address, so that
links can be cut with iptables. Namespaces and processes are removed even when a test fails."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "integration"))

from cluster_settings import FAST

from dynastore import localnet
from dynastore.localcluster import LocalCluster


def _net_id() -> int:
    # Distinct per test process, so parallel runs on one machine do not collide.
    return 100 + os.getpid() % 100


@pytest.fixture
def net_cluster(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., tuple[localnet.PrivateNet, LocalCluster]]]:
    reason = localnet.available()
    if reason is not None:
        if os.geteuid() == 0:
            pytest.fail(f"network namespaces are required for fault tests: {reason}")
        pytest.skip(f"fault tests need network namespaces: {reason}")
    made: list[tuple[localnet.PrivateNet, LocalCluster]] = []
    ca_before = os.environ.get("DYNASTORE_CA")

    def make(count: int, *overrides: str, tls: bool = False) -> tuple[localnet.PrivateNet, LocalCluster]:
        net = localnet.PrivateNet(_net_id(), count)
        net.up()
        if tls:
            # One certificate for the cluster, naming every node's address; clients trust it as their CA.
            cert, key = tmp_path / "cluster.pem", tmp_path / "cluster.key"
            names = ",".join(f"IP:{address}" for address in [*net.addresses, "127.0.0.1"])
            subprocess.run(
                [
                    "openssl",
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=dynastore-test",
                    "-addext",
                    f"subjectAltName={names}",
                    "-keyout",
                    str(key),
                    "-out",
                    str(cert),
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            overrides = (*overrides, f"tls_cert_file={cert}", f"tls_key_file={key}")
            os.environ["DYNASTORE_CA"] = str(cert)
        cluster = LocalCluster(
            tmp_path / "cluster", count, overrides=FAST + overrides, hosts=net.addresses, netns=net.namespaces
        )
        made.append((net, cluster))
        cluster.start()
        cluster.wait_ready(60)
        return net, cluster

    yield make
    for net, cluster in made:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(cluster.logs(60))
        cluster.close()
        net.close()
    if ca_before is None:
        os.environ.pop("DYNASTORE_CA", None)
    else:
        os.environ["DYNASTORE_CA"] = ca_before


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, "rep_" + report.when, report)
