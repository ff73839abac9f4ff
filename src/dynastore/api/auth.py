"""Who may do what over HTTP: the checks every request passes before its route runs.

Theory of operation
-------------------
1. *Where the request comes from.* A node serving a loopback address answers only requests whose
   Host is a loopback name or address (a web page cannot reach it by DNS rebinding); a node on a
   network address accepts any Host unless `http_allowed_hosts` lists the names. A request that could
   change something (PUT, POST, DELETE) whose Origin is not this node is refused: no cross-site
   writes from a browser. `/ping`, `/health` and `/ready` are exempt from both.
2. *What the request needs* (`need_of`): nothing (`/ping`, and `/health` and `/ready`), any known
   user (`/`, `/ring`), one of Riak's permissions on the bucket it names (`/admin/local/B/K` reads an
   object: `riak_kv.get`), `dynastore.status` (`/stats`, `/admin/status`, `/admin/aae`, and
   `/metrics` and `/dashboard`), or `dynastore.admin` (everything else under `/admin`: membership and
   security).
3. *Who is asking.* With security off, everything is open except the operator routes, which answer
   clients connecting from a loopback address or one of the node's own, or requests proved with the
   cluster secret. With security on, every request but the open ones carries HTTP Basic credentials
   (401 without them), checked against the cluster's users, and the user must hold the permission
   (403). Password checks are slow on purpose (scrypt), so verified credentials are kept (bounded,
   forgotten when the user changes) and run off the event loop; failed logins are limited per client
   address. A proof with the cluster secret (an HMAC over a fresh nonce from the node, the method, the
   target and the body: the secret never travels) counts as `dynastore.admin`, which bootstraps the
   first user.

This module decides nothing about the data; it answers 401, 403 or 429, or lets the request through.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from dynastore.api.answers import text
from dynastore.api.server import Request, Response
from dynastore.core import security
from dynastore.core.secret import ADMIN, is_loopback
from dynastore.runtime.node import NodeRuntime

REALM = 'Basic realm="dynastore"'
PROOF_HEADER = "X-Dynastore-Proof"
NONCE_BYTES = 16
NONCE_TTL_S = 60.0
NONCES_MAX = 1024
FAILURE_HOSTS_MAX = 10_000
MUTATING = ("PUT", "POST", "DELETE", "PATCH")
OPEN_ROUTES = (b"ping", b"health", b"ready")


@dataclass(frozen=True, slots=True)
class Need:
    """What a request needs: `permission` None is any known user; `open` nothing at all; `operator` is an
    operator route (membership, security); the bucket it acts on, when it names one."""

    permission: str | None = None
    bucket_type: str | None = None
    bucket: bytes | None = None
    open: bool = False
    operator: bool = False


OPEN = Need(open=True)
STATUS = Need("dynastore.status")
OPERATOR = Need(security.ADMIN, operator=True)


def segments(raw_path: str) -> list[bytes]:
    """The decoded segments of a raw path; `+` is a space, as in Riak."""
    trimmed = raw_path.strip("/")
    if not trimmed:
        return []
    return [unquote_to_bytes(segment.replace("+", " ")) for segment in trimmed.split("/")]


def _on_bucket(method: str, bucket_type: str, bucket: bytes, tail: list[bytes], query: dict[str, str]) -> Need:
    read = method in ("GET", "HEAD")
    if not tail:
        # Legacy /riak/B: POST stores, keys=true lists, otherwise the bucket's properties.
        if method == "POST":
            return Need("riak_kv.put", bucket_type, bucket)
        if query.get("keys") in ("true", "stream"):
            return Need("riak_kv.list_keys", bucket_type, bucket)
        return Need("riak_core.get_bucket" if read else "riak_core.set_bucket", bucket_type, bucket)
    head = tail[0]
    if head == b"props":
        return Need("riak_core.get_bucket" if read else "riak_core.set_bucket", bucket_type, bucket)
    if head == b"index":
        return Need("riak_kv.index", bucket_type, bucket)
    if head == b"keys" and len(tail) == 1:
        return Need("riak_kv.list_keys" if read else "riak_kv.put", bucket_type, bucket)
    if len(tail) >= 3 and tail[2] == b"preflist":
        return Need("riak_kv.get", bucket_type, bucket)
    if read:
        return Need("riak_kv.get", bucket_type, bucket)
    return Need("riak_kv.delete" if method == "DELETE" else "riak_kv.put", bucket_type, bucket)


def need_of(method: str, parts: list[bytes], query: dict[str, str]) -> Need:
    """What the request for `parts` (decoded path segments) with `method` needs (see the module docstring)."""
    if not parts:
        return Need()
    head, rest = parts[0], parts[1:]
    if head in OPEN_ROUTES:
        return OPEN
    if head == b"ring":
        # Partition-aware clients fetch it: any known user may (it names members and addresses).
        return Need()
    if head in (b"stats", b"metrics", b"dashboard"):
        return STATUS
    if head == b"admin":
        read = method in ("GET", "HEAD")
        if rest == [b"challenge"]:
            return OPEN
        if read and rest in ([b"status"], [b"aae"]):
            return STATUS
        if read and len(rest) == 3 and rest[0] == b"local":
            # One replica's copy of an object: what reading it needs.
            return Need("riak_kv.get", "default", rest[1])
        return OPERATOR
    if head == b"buckets":
        if not rest:
            return Need("riak_kv.list_buckets", "default")
        return _on_bucket(method, "default", rest[0], rest[1:], query)
    if head == b"riak":
        if not rest:
            return Need("riak_kv.list_buckets", "default")
        legacy_tail = [b"keys", *rest[1:]] if len(rest) > 1 else []
        return _on_bucket(method, "default", rest[0], legacy_tail, query)
    if head == b"types" and rest:
        bucket_type = rest[0].decode("utf-8", "replace")
        if rest[1:] == [b"props"]:
            read = method in ("GET", "HEAD")
            return Need("riak_core.get_bucket_type" if read else "riak_core.set_bucket_type", bucket_type)
        if rest[1:2] == [b"buckets"]:
            if len(rest) == 2:
                return Need("riak_kv.list_buckets", bucket_type)
            return _on_bucket(method, bucket_type, rest[2], rest[3:], query)
    return Need()


def browser_backup_problem(parts: list[bytes], headers: Mapping[str, str]) -> Response | None:
    """GET /admin/backup copies the whole store onto the node's disk: a page in a local browser must not
    start one (an <img> pointing at a loopback node with security off would, again and again). Browsers
    send an Origin, or Sec-Fetch-Site, on such requests; `dynastore backup` sends neither."""
    if parts != [b"admin", b"backup"]:
        return None
    site = headers.get("Sec-Fetch-Site", "").strip().lower()
    if headers.get("Origin") is not None or site in ("cross-site", "same-site"):
        return text(403, "a backup is not started from a web page: use `dynastore backup`")
    return None


class Guard:
    """The checks of the module docstring, for one node's HTTP API."""

    def __init__(self, runtime: NodeRuntime) -> None:
        self.runtime = runtime
        settings = runtime.settings
        config = runtime.config
        # Bound to 0.0.0.0 and advertised on loopback is still a node on the network (every interface).
        self.loopback_node = config.loopback_only
        self.own_hosts = {config.host.strip("[]"), config.advertised.strip("[]"), "127.0.0.1", "::1"}
        # A node bound to loopback but known by a network address is reached through something on this
        # machine that forwards to it (a proxy, a tunnel): a loopback source is then anyone, and only
        # a proof with the cluster secret makes an operator.
        self.proxied = is_loopback(config.host) and not is_loopback(config.advertised)
        self.allowed_hosts = {h.strip().lower() for h in settings.http_allowed_hosts.split(",") if h.strip()}
        self.cache_max = settings.auth_cache_count_max
        self.failures_max = settings.auth_failures_per_minute_max
        # (user, SHA-256 of the password) -> the user record's stamp it was verified against.
        self._verified: OrderedDict[tuple[str, bytes], security.Stamp] = OrderedDict()
        # client address -> (minute, failed logins in it), oldest first
        self._failures: OrderedDict[str, tuple[int, int]] = OrderedDict()
        # Nonces for proofs with the cluster secret are made statelessly (a MAC under a key of this
        # process), so handing them out costs no memory; only those used are kept, until they expire.
        self._nonce_key = os.urandom(32)
        self._used: OrderedDict[bytes, float] = OrderedDict()
        self.failed_logins = 0
        self._dummy: bytes | None = None

    # --- Where a request comes from ------------------------------------------------------------------

    def origin_problem(self, request: Request, parts: list[bytes]) -> Response | None:
        if parts[:1] in ([b"ping"], [b"health"], [b"ready"]):
            # Probes (a load balancer's, Docker's, a kubelet's) name whatever Host they like; these
            # routes change nothing and tell nothing a page could use.
            return None
        host = _host_name(request.headers.get("Host", ""))
        # A browser always names the host it thinks it talks to; a request without a Host (HTTP/1.0)
        # cannot come from a page rebound to this address.
        if self.loopback_node and host:
            if not is_loopback(host):
                return text(403, "this node serves loopback only: the Host must be a loopback name or address")
        elif self.allowed_hosts and host.lower() not in self.allowed_hosts and host not in self.own_hosts:
            return text(403, f"Host {host!r} is not one this node answers for (http_allowed_hosts)")
        origin = request.headers.get("Origin")
        here = f"{request.scheme}://{request.headers.get('Host', '')}".lower()
        if request.method in MUTATING and origin is not None and origin.rstrip("/").lower() != here:
            return text(403, "cross-origin requests may not change anything")
        return browser_backup_problem(parts, request.headers)

    # --- Who is asking -------------------------------------------------------------------------------

    async def admit(self, request: Request, need: Need) -> Response | None:
        """None to let the request through, else the refusal."""
        if need.open:
            return None
        core = self.runtime.core
        assert core is not None
        state = core.cluster.security
        if PROOF_HEADER in request.headers and self._proved(request):
            # Proved with the cluster secret: an operator, which dynastore.admin is too.
            return None
        if not state.on:
            if not need.operator or self._local(request):
                return None
            return text(
                403,
                "operator routes answer only this machine and proofs with the cluster secret "
                "(dynastore ... --secret-file F)",
            )
        user = await self._authenticate(request, state)
        if isinstance(user, Response):
            return user
        if need.permission is None or security.allowed(state, user, need.permission, need.bucket_type, need.bucket):
            return None
        return text(403, f"user {user} lacks {need.permission}")

    def _local(self, request: Request) -> bool:
        if self.proxied:
            return False
        client = request.client_host
        return is_loopback(client) or client in self.own_hosts

    async def _authenticate(self, request: Request, state: security.SecurityState) -> str | Response:
        credentials = _basic(request.headers.get("Authorization"))
        if credentials is None:
            return text(401, "credentials required", {"WWW-Authenticate": REALM})
        user, password = credentials
        return await self.login(user, password, request.client_host, state)

    async def login(self, user: str, password: str, client: str, state: security.SecurityState) -> str | Response:
        """The user, when the password is theirs, else the refusal (401, or 429 when `client` failed too
        often this minute). Shared by HTTP Basic auth and the PB API's RpbAuthReq."""
        minute = int(time.monotonic() // 60)
        window = self._failures.get(client)
        if window is not None and window[0] == minute and window[1] >= self.failures_max:
            return text(
                429, "too many failed logins from this address; try again within a minute", {"Retry-After": "60"}
            )
        stored = state.user_hash(user)
        stamp = state.user_stamp(user)
        key = (user, hashlib.sha256(password.encode()).digest())
        if stored is not None and stamp is not None and self._verified.get(key) == stamp:
            self._verified.move_to_end(key)
            return user
        # Counted as failed until it proves right, so that attempts made at once all count.
        self._count_failure(client, minute, +1)
        # An unknown user costs a password check too, so that timing does not tell which users exist.
        against = stored if stored is not None else self._dummy_hash()
        ok = await asyncio.to_thread(security.verify_password, against, password) and stored is not None
        if not ok or stamp is None:
            self.failed_logins += 1
            return text(401, "unknown user or wrong password", {"WWW-Authenticate": REALM})
        self._count_failure(client, minute, -1)
        self._verified[key] = stamp
        if len(self._verified) > self.cache_max:
            self._verified.popitem(last=False)
        return user

    def _count_failure(self, client: str, minute: int, change: int) -> None:
        window = self._failures.pop(client, None)
        count = window[1] if window is not None and window[0] == minute else 0
        self._failures[client] = (minute, max(0, count + change))
        while len(self._failures) > FAILURE_HOSTS_MAX:
            self._failures.popitem(last=False)

    def _dummy_hash(self) -> bytes:
        if self._dummy is None:
            self._dummy = security.hash_password(os.urandom(16).hex(), os.urandom(security.SALT_BYTES))
        return self._dummy

    # --- Proofs with the cluster secret ----------------------------------------------------------------

    def challenge(self) -> bytes:
        """A fresh nonce for one proof: when it was made, randomness, and a MAC of both under a key of
        this process. It expires after a minute and is good once; making it stores nothing."""
        made = int(time.monotonic() * 1000).to_bytes(8, "big") + os.urandom(8)
        return made + hmac.new(self._nonce_key, made, hashlib.sha256).digest()[:NONCE_BYTES]

    def _fresh(self, nonce: bytes) -> bool:
        """Whether `nonce` is one of ours, unexpired and not used before (then it is used)."""
        if len(nonce) != 16 + NONCE_BYTES:
            return False
        made, tag = nonce[:16], nonce[16:]
        if not hmac.compare_digest(tag, hmac.new(self._nonce_key, made, hashlib.sha256).digest()[:NONCE_BYTES]):
            return False
        now = time.monotonic()
        if now - int.from_bytes(made[:8], "big") / 1000 > NONCE_TTL_S:
            return False
        while self._used and next(iter(self._used.values())) < now:
            self._used.popitem(last=False)
        if nonce in self._used or len(self._used) >= NONCES_MAX:
            # Used already, or more proofs in a minute than the node remembers: refused (fail closed).
            return False
        self._used[nonce] = now + NONCE_TTL_S
        return True

    def _proved(self, request: Request) -> bool:
        raw = request.headers.get(PROOF_HEADER)
        if not raw:
            return False
        core = self.runtime.core
        assert core is not None
        keys = core.cluster_keys()
        if not keys.configured:
            return False
        try:
            nonce_hex, _, mac_hex = raw.partition(":")
            nonce, mac = bytes.fromhex(nonce_hex), bytes.fromhex(mac_hex)
        except ValueError:
            return False
        target = request.raw_path + ("?" + request.query_string if request.query_string else "")
        body = request.body
        expected = [proof(key, nonce, request.method, target, body) for key in keys.keys(ADMIN)]
        # The nonce is spent only by a proof that verifies: nobody without the secret can use one up.
        return any(hmac.compare_digest(mac, candidate) for candidate in expected) and self._fresh(nonce)


def proof(admin_key: bytes, nonce: bytes, method: str, target: str, body: bytes) -> bytes:
    """What a client shows to prove it holds the cluster secret, for one request."""
    message = nonce + method.encode() + b" " + target.encode() + b" " + hashlib.sha256(body).digest()
    return hmac.new(admin_key, message, hashlib.sha256).digest()


def _basic(header: str | None) -> tuple[str, str] | None:
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep or not user or len(password.encode()) > security.PASSWORD_BYTES_MAX:
        return None
    return user, password


def _host_name(host: str) -> str:
    """The name or address of a Host header, without its port."""
    host = host.strip()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
