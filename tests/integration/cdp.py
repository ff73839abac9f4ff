"""A small client for headless Chromium through the DevTools protocol, for tests that look at a page.

`Browser` starts Debian's `chromium` headless with a throwaway profile, reads the DevTools address the
browser writes into the profile (DevToolsActivePort), and speaks the protocol over one websocket
(aiohttp's client): one page target attached in flat mode, commands matched to replies by id, events
ignored. Every wait is bounded, and closing kills the browser's whole process group, whatever state it
is in. The browser resolves no name but loopback (--host-resolver-rules), so a page cannot reach out.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

START_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 20.0
# Replies held before anyone asks for them are few; events (which we never enable in bulk) are dropped.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    "--metrics-recording-only",
    "--no-pings",
    "--mute-audio",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1, EXCLUDE localhost",
    "--remote-debugging-port=0",
)


class BrowserError(Exception):
    """The browser could not be started or answered a command with an error."""


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium and one page in it; use as `async with Browser(profile_dir) as page:`."""

    def __init__(self, profile_dir: Path, width: int = 1400, height: int = 1000) -> None:
        self.profile_dir = profile_dir
        self.width, self.height = width, height
        self.proc: subprocess.Popen[bytes] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 1
        self._session: str | None = None

    async def __aenter__(self) -> Browser:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _start(self) -> None:
        binary = chromium_path()
        if binary is None:
            raise BrowserError("chromium is not installed (scripts/install-system-deps.sh installs it)")
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.profile_dir / "chromium.log", "wb")  # noqa: SIM115 - kept for the browser's life
        with log:
            self.proc = subprocess.Popen(
                [binary, *FLAGS, f"--user-data-dir={self.profile_dir}", f"--window-size={self.width},{self.height}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = await self._devtools_url()
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(url, max_msg_size=64 * 1024 * 1024, timeout=aiohttp.ClientWSTimeout())
        self._reader = asyncio.create_task(self._read())
        target = await self.command("Target.createTarget", url="about:blank", root=True)
        attached = await self.command("Target.attachToTarget", targetId=target["targetId"], flatten=True, root=True)
        self._session = attached["sessionId"]
        await self.command(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )

    async def _devtools_url(self) -> str:
        """The browser's websocket address, from the file it writes once it listens."""
        port_file = self.profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BrowserError(f"chromium exited with {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError):
                lines = port_file.read_text().split()
                if len(lines) >= 2:
                    return f"ws://127.0.0.1:{int(lines[0])}{lines[1]}"
            await asyncio.sleep(0.1)
        raise BrowserError(f"chromium did not listen within {START_TIMEOUT_S} s: {self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return (self.profile_dir / "chromium.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            future = self._pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BrowserError("the DevTools connection closed"))
        self._pending.clear()

    async def command(self, method: str, *, root: bool = False, **params: Any) -> dict[str, Any]:
        """Send one command (to the page, or to the browser when `root`) and wait for its result."""
        assert self._ws is not None
        ident = self._next_id
        self._next_id += 1
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if not root:
            assert self._session is not None
            message["sessionId"] = self._session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        await self._ws.send_str(json.dumps(message))
        try:
            reply = await asyncio.wait_for(future, COMMAND_TIMEOUT_S)
        finally:
            self._pending.pop(ident, None)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def navigate(self, url: str) -> None:
        reply = await self.command("Page.navigate", url=url)
        if reply.get("errorText"):
            raise BrowserError(f"loading {url}: {reply['errorText']}")

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable values only)."""
        reply = await self.command("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in reply:
            raise BrowserError(f"evaluating {expression!r}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float, interval_s: float = 0.2) -> Any:
        """Evaluate `expression` until it is truthy (its value is returned); BrowserError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        value: Any = None
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() >= deadline:
                raise BrowserError(f"{expression!r} still {value!r} after {timeout_s} s")
            await asyncio.sleep(interval_s)

    async def screenshot(self, path: Path) -> Path:
        """The whole page (not only the window) as a PNG at `path`."""
        size = (await self.command("Page.getLayoutMetrics"))["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        reply = await self.command("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(reply["data"]))
        return path

    async def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 5)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.close()
        if self.proc is not None:
            # The browser's helpers (zygote, renderers) share the process group it was started in.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
