"""Run one node until SIGINT or SIGTERM: the node runtime plus its HTTP server, on uvloop when installed."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal

from dynastore.api.http import Api, make_server
from dynastore.api.pb import server as pb
from dynastore.core.nodebase import StartupError
from dynastore.net import tls
from dynastore.runtime.node import NodeConfig, NodeRuntime
from dynastore.settings import Settings

log = logging.getLogger("dynastore.node")


async def run_node(config: NodeConfig, settings: Settings) -> None:
    runtime = NodeRuntime(config, settings)
    await runtime.start()
    # Everything alive after start-up lives as long as the node: keep it out of every later garbage
    # collection, which then only walks what requests allocate.
    gc.collect()
    gc.freeze()
    api = Api(runtime)
    server = make_server(runtime, api)
    pb_server = pb.make_server(api) if config.pb_port else None
    ssl_context = tls.server_context(settings, require_client_cert=False)
    try:
        await server.start(config.host, config.http_port, ssl_context=ssl_context)
        if pb_server is not None:
            await pb_server.start(config.host, config.pb_port)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, runtime.stopping.set)
        log.info(
            "%s serving %s://%s:%d, peers on %s:%d%s",
            config.name,
            "https" if ssl_context is not None else "http",
            config.host,
            config.http_port,
            config.host,
            config.peer_port,
            f", advertised as {config.advertised}" if config.advertised != config.host else "",
        )
        if pb_server is not None:
            log.info("%s serving Riak PB on %s:%d", config.name, config.host, config.pb_port)
        await runtime.stopping.wait()
        log.info("%s stopping", config.name)
    finally:
        if pb_server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pb_server.stop(), 5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.stop(), 5)
        await runtime.stop()
    if runtime.failure is not None:
        raise StartupError(runtime.failure)


def serve(config: NodeConfig, settings: Settings) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(run_node(config, settings))
    else:
        uvloop.run(run_node(config, settings))
