"""A small synchronous client of Riak's Protocol Buffers API for tests: frames out, frames in.

It speaks the framing itself (4-byte big-endian length, code, body) and uses the server's message
classes (dynastore.api.pb.schema) only to build and read bodies; the field numbers those classes carry
are checked against riak_pb's on their own (tests/api/test_pb_schema.py).
"""

from __future__ import annotations

import socket
import ssl
import struct
from typing import Any

from dynastore.api.pb import schema


class PbClient:
    def __init__(self, host: str, port: int, timeout_s: float = 15.0) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection((host, port), timeout=timeout_s)
        self.host = host

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> PbClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, name: str, message: Any = None, **fields: Any) -> None:
        if message is None and fields:
            message = schema.message(name)(**fields)
        body = b"" if message is None else message.SerializePartialToString()
        self.send_raw(struct.pack(">IB", len(body) + 1, schema.CODES[name]) + body)

    def _exactly(self, count: int) -> bytes:
        chunks = []
        while count:
            chunk = self.sock.recv(count)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            chunks.append(chunk)
            count -= len(chunk)
        return b"".join(chunks)

    def recv(self) -> tuple[str, Any]:
        """The next frame as (message name, decoded message or None for a bare code)."""
        length = struct.unpack(">I", self._exactly(4))[0]
        code = self._exactly(1)[0]
        body = self._exactly(length - 1)
        name = schema.NAMES[code]
        try:
            cls = schema.message(name)
        except KeyError:
            return name, None
        return name, cls.FromString(body)

    def call(self, name: str, message: Any = None, **fields: Any) -> tuple[str, Any]:
        self.send(name, message, **fields)
        return self.recv()

    def expect(self, answer: str, name: str, message: Any = None, **fields: Any) -> Any:
        got, body = self.call(name, message, **fields)
        if got != answer:
            detail = body.errmsg.decode() if got == "RpbErrorResp" else got
            raise AssertionError(f"{name} answered {got}, not {answer}: {detail}")
        return body

    def error(self, name: str, message: Any = None, **fields: Any) -> str:
        got, body = self.call(name, message, **fields)
        assert got == "RpbErrorResp", f"{name} answered {got}, not an error"
        text: str = body.errmsg.decode()
        return text

    def start_tls(self, context: ssl.SSLContext) -> None:
        self.expect("RpbStartTls", "RpbStartTls")
        self.sock = context.wrap_socket(self.sock, server_hostname=self.host)
