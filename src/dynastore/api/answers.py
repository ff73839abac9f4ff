"""How the HTTP API answers: plain-text and JSON responses, the status of each kind of failure, and the
error a handler raises for input it refuses. Shared by every route module; it knows no route.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from dynastore.api.server import Response, StreamResponse
from dynastore.core.messages import ClientResponse, Failure

# What a handler answers: a complete response, or one it has streamed (listing keys with keys=stream).
Answer = Response | StreamResponse

# The HTTP status of each kind of failure the core reports.
STATUS_OF_FAILURE = {
    "bad_request": 400,
    "too_large": 413,
    "too_many_siblings": 409,
    "unavailable": 503,
    "timeout": 503,
    "overload": 503,
    "insufficient_storage": 507,
    "precondition": 412,
}


class BadRequest(Exception):
    """Client input that cannot be accepted; the message is the plain-text reason."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


def text(status: int, body: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(status=status, text=body if body.endswith("\n") else body + "\n", headers=headers)


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(status=status, text=json.dumps(data), content_type="application/json", headers=headers)


def failure(response: ClientResponse) -> Response:
    """A failure the core reported, as the HTTP status its kind maps to and its reason."""
    assert isinstance(response, Failure)
    return text(STATUS_OF_FAILURE.get(response.kind, 503), response.reason)


def bool_param(query: Mapping[str, str], name: str) -> bool:
    """A true/false query parameter as Riak takes it (absent: false); anything else is a 400."""
    raw = query.get(name)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise BadRequest(f"{name} must be true or false; got {raw!r}")
