"""One node of the pysyncobj peer of the YCSB comparison: a Raft-replicated dict behind a tiny HTTP API.

    python -m dynastore.bench.ycsb_pysyncobj_server --raft 127.0.0.1:R0 --partner 127.0.0.1:R1 \
        --partner 127.0.0.1:R2 --http-port H0

- `PUT /kv/KEY` (body: the value) answers 204 once the write is committed by a Raft majority and
  applied here; pysyncobj forwards a follower's writes to the leader itself.
- `GET /kv/KEY` answers 200 with the value, or 404, from this node's own copy of the dict: pysyncobj
  has no linearizable read, so a follower may answer with a value a little behind the leader.
- `GET /ready` answers 200 once this node knows a leader (so that writes can commit), else 503.

The Raft log is kept in memory, pysyncobj's default; its file journal is an mmap it never fsyncs, so
a file would add I/O without adding durability. Entries are sent as soon as they are submitted
(`appendEntriesUseBatch=False`): with batching on, pysyncobj holds each write until its next 50 ms
tick, which on this benchmark's closed loop cut its throughput about six-fold.

The benchmark starts three of these and kills their process groups when it is done; this module is
never imported by dynastore itself.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from aiohttp import web
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.batteries import ReplDict


def build_app(store: Any, raft: Any) -> web.Application:
    loop = asyncio.get_running_loop()

    async def ready(request: web.Request) -> web.Response:
        leader = raft._getLeader()
        return web.Response(status=200 if raft.isReady() and leader is not None else 503, text=str(leader))

    async def get(request: web.Request) -> web.Response:
        value = store.get(request.match_info["key"])
        if value is None:
            return web.Response(status=404)
        return web.Response(body=value)

    async def put(request: web.Request) -> web.Response:
        key, value = request.match_info["key"], await request.read()
        done: asyncio.Future[Any] = loop.create_future()

        def committed(result: Any, error: Any) -> None:
            # Called on pysyncobj's own thread: hand the outcome to the event loop.
            loop.call_soon_threadsafe(_settle, done, error)

        store.set(key, value, callback=committed)
        try:
            error = await asyncio.wait_for(done, timeout=10.0)
        except TimeoutError:
            return web.Response(status=503, text="not committed within 10 s")
        if error != 0:  # pysyncobj's FAIL_REASON.SUCCESS
            return web.Response(status=503, text=f"not committed: pysyncobj reason {error}")
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/ready", ready)
    app.router.add_get("/kv/{key}", get)
    app.router.add_put("/kv/{key}", put)
    return app


def _settle(done: asyncio.Future[Any], error: Any) -> None:
    if not done.done():
        done.set_result(error)


async def serve(raft_address: str, partners: list[str], http_port: int) -> None:
    store = ReplDict()
    conf = SyncObjConf(dynamicMembershipChange=False, appendEntriesUseBatch=False)
    raft = SyncObj(raft_address, partners, consumers=[store], conf=conf)
    runner = web.AppRunner(build_app(store, raft), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, raft_address.rpartition(":")[0], http_port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        raft.destroy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raft", required=True, help="host:port of this node's Raft endpoint")
    parser.add_argument("--partner", action="append", default=[], help="host:port of another node's Raft endpoint")
    parser.add_argument("--http-port", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.raft, args.partner, args.http_port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
