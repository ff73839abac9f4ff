"""Python clients for dynastore: `HttpClient` (any node coordinates) and `RingAwareClient` (each
request goes straight to a node of its key's preference list: Dynamo's client-driven coordination)."""

from dynastore.client.http import ClientError, DataType, Fetched, HttpClient, Resolver, Value
from dynastore.client.ring_aware import RingAwareClient
from dynastore.client.routing import RingView, Route

__all__ = [
    "ClientError",
    "DataType",
    "Fetched",
    "HttpClient",
    "Resolver",
    "RingAwareClient",
    "RingView",
    "Route",
    "Value",
]
