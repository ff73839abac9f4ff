"""A tiny synchronous HTTP helper for tests (status, headers, body; never raises on 4xx/5xx)."""

from __future__ import annotations

import http.client
import os
from urllib.parse import quote, urlsplit

from dynastore.net.tls import http_client_context


def call(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout_s: float = 15.0
) -> tuple[int, dict[str, str], bytes]:
    """One request; https:// URLs are verified against the CA in $DYNASTORE_CA."""
    parts = urlsplit(url)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        context = http_client_context(os.environ["DYNASTORE_CA"])
        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout_s, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k: v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def obj(base: str, bucket: str, key: str, query: str = "") -> str:
    return f"{base}/buckets/{quote(bucket, safe='')}/keys/{quote(key, safe='')}" + (f"?{query}" if query else "")


def put(
    base: str,
    bucket: str,
    key: str,
    value: bytes,
    vclock: str | None = None,
    query: str = "",
    content_type: str = "text/plain",
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": content_type}
    if vclock:
        headers["X-Riak-Vclock"] = vclock
    return call("PUT", obj(base, bucket, key, query), value, headers)


def get(base: str, bucket: str, key: str, query: str = "", accept: str = "*/*") -> tuple[int, dict[str, str], bytes]:
    return call("GET", obj(base, bucket, key, query), headers={"Accept": accept})
