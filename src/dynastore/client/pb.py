"""A minimal asyncio client of Riak's Protocol Buffers API (api/pb/) for the workload driver: one
connection, one request at a time, get and put of plain objects with their vclock, and 2i queries.

It answers as the HTTP client does (client/http.py's Fetched and ClientError), so the driver's
dynastore target takes either. With a user it authenticates (RpbAuthReq) after upgrading to TLS by
RpbStartTls when it is given an SSL context, as the node requires on a network address.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from dynastore.api.pb import framing, schema
from dynastore.client.http import ClientError, Fetched, IndexResult, Value

# What one answer may weigh: an object's siblings are bounded by the node, this by the client.
ANSWER_BYTES_MAX = 256 * 1024 * 1024
READ_BYTES = 64 * 1024


class PbClient:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout_s: float = 10.0,
        auth: tuple[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.timeout_s = timeout_s
        self.auth = auth
        self.ssl_context = ssl_context
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._decoder = framing.Decoder(ANSWER_BYTES_MAX)
        self._frames: list[framing.Frame] = []
        self._lock = asyncio.Lock()

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=READ_BYTES)
        self._decoder = framing.Decoder(ANSWER_BYTES_MAX)
        self._frames = []
        if self.ssl_context is not None:
            await self._exchange("RpbStartTls", None, "RpbStartTls")
            await self._writer.start_tls(self.ssl_context, server_hostname=self.host)
        if self.auth is not None:
            user, password = self.auth
            await self._exchange(
                "RpbAuthReq",
                schema.message("RpbAuthReq")(user=user.encode(), password=password.encode()),
                "RpbAuthResp",
            )

    async def _recv(self) -> framing.Frame:
        assert self._reader is not None
        while not self._frames:
            data = await self._reader.read(READ_BYTES)
            if not data:
                raise ConnectionResetError("the node closed the connection")
            self._frames = self._decoder.feed(data)
        return self._frames.pop(0)

    async def _exchange(self, name: str, message: Any, answer: str) -> Any:
        assert self._writer is not None
        body = b"" if message is None else message.SerializeToString()
        self._writer.write(framing.encode(schema.CODES[name], body))
        async with asyncio.timeout(self.timeout_s):
            await self._writer.drain()
            frame = await self._recv()
        got = schema.NAMES.get(frame.code, str(frame.code))
        if got == "RpbErrorResp":
            error = schema.message("RpbErrorResp").FromString(frame.body)
            raise ClientError(503, error.errmsg.decode("utf-8", "replace"))
        if got != answer:
            raise ClientError(502, f"{name} was answered by {got}")
        try:
            return schema.message(answer).FromString(frame.body)
        except KeyError:
            return None

    async def _call(self, name: str, message: Any, answer: str) -> Any:
        async with self._lock:
            if self._writer is None:
                await self._connect()
            try:
                return await self._exchange(name, message, answer)
            except (OSError, TimeoutError, framing.FrameError):
                # The connection's state is unknown: the next request opens a new one.
                await self.close()
                raise

    async def get(self, bucket: str | bytes, key: str | bytes) -> Fetched:
        req = schema.message("RpbGetReq")(bucket=_bytes(bucket), key=_bytes(key))
        got = await self._call("RpbGetReq", req, "RpbGetResp")
        values = tuple(
            Value(
                c.value,
                c.content_type.decode(),
                {p.key.decode(): p.value.decode() for p in c.usermeta},
                c.vtag.decode(),
            )
            for c in got.content
        )
        return Fetched(values, got.vclock.decode("ascii") if got.vclock else None)

    async def put(
        self, bucket: str | bytes, key: str | bytes, data: bytes, *, context: str | None = None
    ) -> str | None:
        """Stores `data` over the version `context` names; the new version's context (the body is asked
        back for it, as Riak gives a vclock only with the body)."""
        req = schema.message("RpbPutReq")(bucket=_bytes(bucket), key=_bytes(key), return_head=True)
        req.content.value = data
        req.content.content_type = b"application/octet-stream"
        if context:
            req.vclock = context.encode("ascii")
        got = await self._call("RpbPutReq", req, "RpbPutResp")
        return got.vclock.decode("ascii") if got.vclock else None

    async def index(
        self,
        bucket: str | bytes,
        field: str,
        low: str | int,
        high: str | int | None = None,
        *,
        max_results: int | None = None,
        continuation: str | None = None,
        return_terms: bool = False,
        timeout_ms: int | None = None,
    ) -> IndexResult:
        """One secondary-index query (RpbIndexReq, not streamed), answered as HttpClient.index answers:
        exact when `high` is None, else the range [low, high]."""
        request = schema.message("RpbIndexReq")
        req = request(bucket=_bytes(bucket), index=field.encode(), return_terms=return_terms)
        if high is None:
            req.qtype, req.key = request.eq, str(low).encode()
        else:
            req.qtype, req.range_min, req.range_max = request.range, str(low).encode(), str(high).encode()
        if max_results is not None:
            req.max_results = max_results
        if continuation is not None:
            req.continuation = continuation.encode("ascii")
        if timeout_ms is not None:
            req.timeout = timeout_ms
        got = await self._call("RpbIndexReq", req, "RpbIndexResp")
        results: tuple[tuple[str | int | None, str], ...]
        if got.results:
            results = tuple(
                (
                    int(p.key) if field.endswith("_int") else p.key.decode(errors="replace"),
                    p.value.decode(errors="replace"),
                )
                for p in got.results
            )
        else:
            results = tuple((None, key.decode(errors="replace")) for key in got.keys)
        return IndexResult(results, got.continuation.decode("ascii") if got.HasField("continuation") else None)

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (OSError, TimeoutError):
                pass


def _meta(pairs: Any) -> dict[str, str]:
    return {p.key.decode(): p.value.decode() for p in pairs}


def _bytes(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode()
