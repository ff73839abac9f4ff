"""The asyncio shell around a NodeCore, with its batch write held open: what waits for the disk.

One node (n_val 1) in this process, on uvloop as a real node runs; the engine's write is gated so
that a batch stays "being written" for as long as the test wants. Bounded in time throughout.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop

from dynastore.core.messages import ClientGet, ClientPut, ClientResponse, Ok
from dynastore.core.objects import Content
from dynastore.runtime.node import NodeConfig, NodeRuntime
from dynastore.settings import Settings
from dynastore.storage.base import Engine, Op

WAIT_S = 10.0


class GatedEngine:
    """The node's engine, whose writes wait for `open` once `close()` was called."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.opened = threading.Event()
        self.opened.set()
        self.entered = threading.Event()

    def close_gate(self) -> None:
        self.opened.clear()
        self.entered.clear()

    def write(self, ops: Sequence[Op]) -> None:
        self.entered.set()
        if not self.opened.wait(WAIT_S):
            raise TimeoutError("the test never opened the gate")
        self._engine.write(ops)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def values(response: ClientResponse) -> list[bytes]:
    assert isinstance(response, Ok) and response.found is not None, response
    return sorted(content.value for _, content in response.found.values)


def put(key: bytes, value: bytes) -> ClientPut:
    return ClientPut(b"b", key, None, Content(value))


def test_reads_wait_for_the_batch_being_written_only_when_they_saw_it(tmp_path: Path) -> None:
    """While a batch is being written, a read of a key on disk is answered; a read of the key being
    written and the write itself are answered only once the batch is on disk."""

    async def scenario() -> None:
        settings = Settings().with_mapping({"n_val": 1, "r": 1, "w": 1})
        runtime = NodeRuntime(NodeConfig("solo", "127.0.0.1", 0, 0, tmp_path), settings)
        await runtime.start()
        assert runtime.engine is not None
        gate = GatedEngine(runtime.engine)
        try:
            assert isinstance(await asyncio.wait_for(runtime.request(put(b"old", b"v1")), WAIT_S), Ok)
            runtime.engine = gate  # type: ignore[assignment]
            gate.close_gate()
            write = asyncio.ensure_future(runtime.request(put(b"new", b"v2")))
            assert await asyncio.to_thread(gate.entered.wait, WAIT_S)
            on_disk = await asyncio.wait_for(runtime.request(ClientGet(b"b", b"old")), WAIT_S)
            assert values(on_disk) == [b"v1"]
            staged = asyncio.ensure_future(runtime.request(ClientGet(b"b", b"new")))
            await asyncio.sleep(0.2)
            assert not write.done() and not staged.done()
            gate.opened.set()
            assert isinstance(await asyncio.wait_for(write, WAIT_S), Ok)
            assert values(await asyncio.wait_for(staged, WAIT_S)) == [b"v2"]
        finally:
            gate.opened.set()
            await asyncio.wait_for(runtime.stop(), WAIT_S)

    uvloop.run(asyncio.wait_for(scenario(), 4 * WAIT_S))
