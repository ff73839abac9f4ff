"""Real processes and a real browser: every node's /dashboard renders the cluster in headless Chromium
and shows a killed member down within 10 s; with security on the page needs dynastore.status and says
so when a fetch is refused; the static route serves only its own files."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cdp import Browser, chromium_path
from http_util import call, get, put
from proc_util import dynastore_ok as cli

from dynastore.localcluster import LocalCluster

MakeCluster = Callable[..., LocalCluster]

DOWN_WITHIN_S = 10.0
SCENARIO_TIMEOUT_S = 120.0
MEMBERS_JS = (
    "Array.from(document.querySelectorAll('#members tr[data-member]'))"
    ".map(r => [r.dataset.member, r.dataset.up, r.querySelector('.health').textContent])"
)


class Load:
    """Writes and reads against the live nodes while the page watches, so its charts have something to
    draw (bounded in count; stopped by the test)."""

    def __init__(self, urls: list[str], ops_max: int = 20_000) -> None:
        self.urls = urls
        self.ops_max = ops_max
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)

    def _run(self) -> None:
        for i in range(self.ops_max):
            if self.stop.is_set():
                return
            url = self.urls[i % len(self.urls)]
            key = f"k{i % 200}"
            try:
                put(url, "dash", key, b"x" * 100)
                get(url, "dash", key)
            except OSError:
                pass
            self.stop.wait(0.02)


# DYNASTORE_SCREENSHOT_DIR=docs saves the screenshot as docs/dashboard.png too (the README's), after
# SCREENSHOT_LOAD_S of load so that the charts have a history to show.
SCREENSHOT_DIR = os.environ.get("DYNASTORE_SCREENSHOT_DIR")
SCREENSHOT_LOAD_S = 45.0


def screenshot_targets(tmp_path: Path) -> list[Path]:
    targets = [tmp_path / "dashboard.png"]
    if SCREENSHOT_DIR:
        targets.append(Path(SCREENSHOT_DIR) / "dashboard.png")
    return targets


def test_the_dashboard_shows_three_members_up_then_a_killed_one_down_within_ten_seconds(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    """The page a node serves, loaded in headless Chromium, lists the three members as up; after one is
    killed it shows that member down (the failure detector's view) within 10 s; a screenshot is saved."""
    assert chromium_path() is not None, "chromium is missing: scripts/install-system-deps.sh installs it"
    cluster = make_cluster(3)
    watcher, victim = cluster[0], cluster[2]
    shots = screenshot_targets(tmp_path)

    async def scenario() -> float:
        async with Browser(tmp_path / "chromium-profile") as page:
            await page.command("Page.enable")
            await page.navigate(watcher.url + "/dashboard")
            members = await page.wait_for(
                f"(() => {{ const m = {MEMBERS_JS}; return m.length === 3 && m.every(r => r[1] === 'true') && m; }})()",
                30,
            )
            assert sorted(name for name, _, _ in members) == ["node0", "node1", "node2"]
            assert all(text == "up" for _, _, text in members)
            # The ring picture: one wedge per partition, every member owning some.
            wedges = await page.evaluate("document.querySelectorAll('#ring path[data-partition]').length")
            assert wedges == 64
            with Load([watcher.url, cluster[1].url]):
                # A few seconds of load, so the charts show throughput and latency.
                await page.wait_for("document.querySelectorAll('#throughput path[data-series]').length === 3", 20)
                await page.wait_for(
                    "parseFloat(document.querySelector('#throughput-legend li').textContent.split(': ')[1]) > 0", 20
                )
                if SCREENSHOT_DIR:
                    await asyncio.sleep(SCREENSHOT_LOAD_S)
                killed_at = time.monotonic()
                victim.kill()
                await page.wait_for(
                    "document.querySelector('#members tr[data-member=\"node2\"]').dataset.up === 'false'",
                    DOWN_WITHIN_S,
                    interval_s=0.1,
                )
                shown_down_s = time.monotonic() - killed_at
                row = await page.evaluate(
                    "document.querySelector('#members tr[data-member=\"node2\"] .health').textContent"
                )
                assert row == "down"
                others = await page.evaluate(MEMBERS_JS)
                assert [r[1] for r in others if r[0] != "node2"] == ["true", "true"]
            problem = await page.evaluate("document.getElementById('problem').hidden")
            assert problem is True
            for shot in shots:
                await page.screenshot(shot)
            return shown_down_s

    shown_down_s = asyncio.run(asyncio.wait_for(scenario(), SCENARIO_TIMEOUT_S))
    print(f"dashboard showed node2 down {shown_down_s:.1f} s after it was killed")
    assert shown_down_s <= DOWN_WITHIN_S
    for shot in shots:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_dashboard_route_serves_its_own_files_with_their_types_and_nothing_else(
    make_cluster: MakeCluster,
) -> None:
    """/dashboard and its script and style come with their content types, caching and security headers,
    and revalidate by ETag; an unknown file, a deeper path, an encoded traversal and a write are refused
    without touching anything outside the three files."""
    cluster = make_cluster(1)
    url = cluster[0].url
    expected = {
        "/dashboard": "text/html; charset=utf-8",
        "/dashboard/": "text/html; charset=utf-8",
        "/dashboard/dashboard.js": "text/javascript; charset=utf-8",
        "/dashboard/dashboard.css": "text/css; charset=utf-8",
    }
    for path, content_type in expected.items():
        status, headers, body = call("GET", url + path)
        assert status == 200, (path, status)
        assert headers["Content-Type"] == content_type
        assert headers["Cache-Control"] == "no-cache"
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert body
        status, _, body = call("GET", url + path, headers={"If-None-Match": headers["ETag"]})
        assert (status, body) == (304, b"")
        status, head_headers, body = call("HEAD", url + path)
        assert (status, body, head_headers["ETag"]) == (200, b"", headers["ETag"])
    # The page names only its own files, by absolute same-origin paths.
    _, _, page = call("GET", url + "/dashboard")
    assert set(re.findall(rb'(?:src|href)="([^"]+)"', page)) == {
        b"/dashboard/dashboard.css",
        b"/dashboard/dashboard.js",
    }
    for path in (
        "/dashboard/nothing.js",
        "/dashboard/dashboard.html",
        "/dashboard/static/dashboard.js",
        "/dashboard/..%2Fhttp.py",
        "/dashboard/%2e%2e%2f%2e%2e%2fpyproject.toml",
        "/dashboard/../admin/status",
        "/dashboard/dashboard.js/x",
        "/dashboard//dashboard.js",
    ):
        status, _, body = call("GET", url + path)
        assert status == 404, (path, status, body)
    status, headers, _ = call("POST", url + "/dashboard", b"x")
    assert status == 405 and headers["Allow"] == "GET, HEAD"


def test_with_security_on_the_page_needs_the_status_permission_and_says_so_when_a_fetch_is_refused(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    """/dashboard answers 401 without credentials and 403 to a user without dynastore.status; a user with
    it sees the page, whose fetches carry the credentials the browser was given; once the grant is
    revoked the page says which route refused it and why."""
    assert chromium_path() is not None, "chromium is missing: scripts/install-system-deps.sh installs it"
    cluster = make_cluster(1)
    url = cluster[0].url
    admin = ["--node", url, "--secret-file", str(cluster.root / "cluster.secret")]
    password_file = tmp_path / "ops.password"
    password_file.write_text("ops-password-1\n")
    cli("security", "add-user", "ops", "--password-file", str(password_file), *admin)
    cli("security", "add-user", "guest", "--password-file", str(password_file), *admin)
    cli("security", "grant", "dynastore.status", "--on", "any", "--to", "ops", *admin)
    cli("security", "enable", *admin)
    cluster.set_secure(True)

    def auth(user: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:ops-password-1".encode()).decode()}

    status, headers, _ = call("GET", url + "/dashboard")
    assert status == 401 and headers["WWW-Authenticate"] == 'Basic realm="dynastore"'
    assert call("GET", url + "/dashboard/dashboard.js", headers=auth("guest"))[0] == 403
    assert call("GET", url + "/dashboard", headers=auth("ops"))[0] == 200

    async def scenario() -> str:
        async with Browser(tmp_path / "chromium-profile") as page:
            await page.command("Page.enable")
            # Credentials in the address, as a person types them into the browser's dialog: the browser
            # answers the challenge with them and sends them again with the page's own fetches.
            host = url.removeprefix("http://")
            await page.navigate(f"http://ops:ops-password-1@{host}/dashboard")
            await page.wait_for("document.querySelectorAll('#members tr[data-member]').length === 1", 30)
            assert await page.evaluate("document.getElementById('problem').hidden") is True
            cli("security", "revoke", "dynastore.status", "--on", "any", "--from", "ops", *admin)
            message: str = await page.wait_for(
                "!document.getElementById('problem').hidden && document.getElementById('problem').textContent",
                15,
            )
            await page.screenshot(tmp_path / "refused.png")
            return message

    message = asyncio.run(asyncio.wait_for(scenario(), SCENARIO_TIMEOUT_S))
    assert "refused /admin/status (403" in message, message
    assert "dynastore.status" in message, message
