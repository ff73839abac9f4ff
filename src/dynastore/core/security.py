"""Users, permissions and whether security is on: cluster metadata, and the checks made against it.

Theory of operation
-------------------
Security state is part of the cluster state every node holds and gossips (membership.py). It is three
kinds of record, each versioned by (version, author) and merged by keeping the greater, so concurrent
changes made at different nodes converge deterministically:
- whether security is on;
- users: a name and a password hash (salted scrypt, see `hash_password`); a deleted user keeps a
  record with no hash, so that a deletion beats an older creation wherever the two meet;
- grants: (user, permission, scope), present or revoked. A grant is its own record, so that two
  permissions granted to one user at two nodes at once are both kept.

Permissions carry Riak's names, plus `dynastore.status` (stats, ring, metrics, dashboard) and
`dynastore.admin` (membership and security changes), which implies every other. A scope is `any`, a
bucket type (`default`) or a bucket of the default type (any other single word), or one bucket of
one type (`TYPE/BUCKET`).

Pure: the password hashing is the standard library's scrypt, given its salt; the checks read values.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

PERMISSIONS = (
    "riak_kv.get",
    "riak_kv.put",
    "riak_kv.delete",
    "riak_kv.list_keys",
    "riak_kv.list_buckets",
    "riak_kv.index",
    "riak_core.get_bucket",
    "riak_core.set_bucket",
    "riak_core.get_bucket_type",
    "riak_core.set_bucket_type",
    "dynastore.status",
    "dynastore.admin",
)
ADMIN = "dynastore.admin"
ANY = "any"
DEFAULT_TYPE = "default"
USER_BYTES_MAX = 64
SCOPE_BYTES_MAX = 1024
# scrypt's cost: 16 MiB of memory and some tens of milliseconds per hash, which is why verified
# credentials are cached (api/auth.py).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
PASSWORD_BYTES_MAX = 1024


class SecurityError(ValueError):
    """Security metadata (or an operator's change to it) that is not acceptable; says why."""


@dataclass(frozen=True, slots=True, order=True)
class Stamp:
    """Which version of a record, and which node wrote it: the greater wins a merge."""

    version: int
    author: str


@dataclass(frozen=True)
class SecurityState:
    enabled: tuple[bool, Stamp] | None = None
    # name -> (password hash, or b"" once deleted; stamp)
    users: tuple[tuple[str, bytes, Stamp], ...] = ()
    # (user, permission, scope) -> (present; stamp)
    grants: tuple[tuple[str, str, str, bool, Stamp], ...] = ()

    @property
    def on(self) -> bool:
        return self.enabled is not None and self.enabled[0]

    @functools.cached_property
    def _users(self) -> dict[str, tuple[bytes, Stamp]]:
        # Looked up on every request with security on; a state is immutable, so built once.
        return {user: (digest, stamp) for user, digest, stamp in self.users}

    @functools.cached_property
    def _grants(self) -> dict[str, list[tuple[str, str]]]:
        out: dict[str, list[tuple[str, str]]] = {}
        for user, perm, scope, present, _ in self.grants:
            if present:
                out.setdefault(user, []).append((perm, scope))
        return out

    def user_hash(self, name: str) -> bytes | None:
        entry = self._users.get(name)
        return None if entry is None else entry[0] or None

    def user_stamp(self, name: str) -> Stamp | None:
        entry = self._users.get(name)
        return None if entry is None else entry[1]

    def grants_of(self, user: str) -> list[tuple[str, str]]:
        return list(self._grants.get(user, ()))

    def user_names(self) -> list[str]:
        return sorted(user for user, digest, _ in self.users if digest)

    # --- Changes (each returns a new state; `author` is the node making it) --------------------------

    def with_enabled(self, on: bool, author: str) -> SecurityState:
        version = 1 if self.enabled is None else self.enabled[1].version + 1
        return replace(self, enabled=(on, Stamp(version, author)))

    def with_user(self, name: str, digest: bytes, author: str) -> SecurityState:
        """Add or replace a user (`digest` b"": delete it)."""
        stamp = self.user_stamp(name)
        record = (name, digest, Stamp(1 if stamp is None else stamp.version + 1, author))
        others = tuple(u for u in self.users if u[0] != name)
        grants = self.grants
        if not digest:
            # A deleted user's grants go with it (a new user of that name starts with none).
            grants = tuple(
                (u, p, s, False if u == name else present, Stamp(st.version + 1, author) if u == name else st)
                for u, p, s, present, st in grants
            )
        return replace(self, users=tuple(sorted((*others, record))), grants=grants)

    def with_grant(self, user: str, perm: str, scope: str, present: bool, author: str) -> SecurityState:
        current = next((g for g in self.grants if g[:3] == (user, perm, scope)), None)
        stamp = Stamp(1 if current is None else current[4].version + 1, author)
        others = tuple(g for g in self.grants if g[:3] != (user, perm, scope))
        return replace(self, grants=tuple(sorted((*others, (user, perm, scope, present, stamp)))))


EMPTY = SecurityState()


def merge(a: SecurityState, b: SecurityState) -> SecurityState:
    """Per record, the greater (stamp, content): commutative, associative and idempotent."""
    enabled = a.enabled
    if b.enabled is not None and (enabled is None or (b.enabled[1], b.enabled[0]) > (enabled[1], enabled[0])):
        enabled = b.enabled
    users: dict[str, tuple[str, bytes, Stamp]] = {u[0]: u for u in a.users}
    for u in b.users:
        mine = users.get(u[0])
        if mine is None or (u[2], u[1]) > (mine[2], mine[1]):
            users[u[0]] = u
    grants: dict[tuple[str, str, str], tuple[str, str, str, bool, Stamp]] = {g[:3]: g for g in a.grants}
    for g in b.grants:
        mine_grant = grants.get(g[:3])
        if mine_grant is None or (g[4], g[3]) > (mine_grant[4], mine_grant[3]):
            grants[g[:3]] = g
    return SecurityState(enabled, tuple(sorted(users.values())), tuple(sorted(grants.values())))


# --- Checks -----------------------------------------------------------------------------------------


def scope_covers(scope: str, bucket_type: str | None, bucket: bytes | None) -> bool:
    """Whether a grant's scope covers a request on `bucket` of `bucket_type` (None: not about one)."""
    if scope == ANY:
        return True
    if bucket_type is None:
        return False
    name = bucket.decode("utf-8", "replace") if bucket is not None else None
    if "/" in scope:
        grant_type, _, grant_bucket = scope.partition("/")
        return grant_type == bucket_type and grant_bucket == name
    # One word: a bucket type (every bucket of it, as in Riak; "default" is the default type), or a
    # bucket of the default type of that name (a bucket named "default" is "default/default").
    if scope == bucket_type:
        return True
    if scope == DEFAULT_TYPE:
        return False
    return bucket_type == DEFAULT_TYPE and scope == name


def allowed(state: SecurityState, user: str, perm: str, bucket_type: str | None, bucket: bytes | None) -> bool:
    """Whether `user` holds `perm` (or dynastore.admin) on a scope covering the request."""
    for granted, scope in state.grants_of(user):
        if granted in (perm, ADMIN) and scope_covers(scope, bucket_type, bucket):
            return True
    return False


def check_user_name(name: str) -> str | None:
    if not name or len(name.encode()) > USER_BYTES_MAX or not all(ch.isalnum() or ch in "._-@" for ch in name):
        return f"a user name is 1 to {USER_BYTES_MAX} bytes of letters, digits and . _ - @"
    return None


def check_grant(perm: str, scope: str) -> str | None:
    if perm not in PERMISSIONS:
        return f"unknown permission {perm!r}; permissions are {', '.join(PERMISSIONS)}"
    if not scope or len(scope.encode()) > SCOPE_BYTES_MAX or scope.count("/") > 1 or scope.startswith("/"):
        return "a scope is any, a bucket type or bucket name, or TYPE/BUCKET"
    return None


# --- Passwords ---------------------------------------------------------------------------------------


def hash_password(password: str, salt: bytes) -> bytes:
    """A salted scrypt hash of `password`, with its parameters, as stored in a user record."""
    assert len(salt) == SALT_BYTES
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 << 20, dklen=HASH_BYTES
    )
    return (
        b"scrypt:" + b"%d:%d:%d:" % (SCRYPT_N, SCRYPT_R, SCRYPT_P) + salt.hex().encode() + b":" + digest.hex().encode()
    )


def verify_password(stored: bytes, password: str) -> bool:
    """Whether `password` is the one `stored` was made from (slow: one scrypt)."""
    try:
        algo, n, r, p, salt, digest = stored.split(b":")
        if algo != b"scrypt":
            return False
        params = int(n), int(r), int(p)
        if not (params[0] <= 1 << 20 and params[1] <= 16 and params[2] <= 4):
            return False
        derived = hashlib.scrypt(
            password.encode(),
            salt=bytes.fromhex(salt.decode()),
            n=params[0],
            r=params[1],
            p=params[2],
            maxmem=128 << 20,
            dklen=len(digest) // 2,
        )
    except (ValueError, UnicodeError):
        return False
    return hmac.compare_digest(derived.hex().encode(), digest)


def check_stored_hash(stored: bytes) -> bool:
    """Whether a peer's user record holds a hash in the form this module writes (or b"": deleted)."""
    if stored == b"":
        return True
    parts = stored.split(b":")
    return len(parts) == 6 and parts[0] == b"scrypt" and all(parts[1:])


# --- Encoding (inside the cluster state) ---------------------------------------------------------------


def to_wire(state: SecurityState) -> list[Any]:
    enabled = None if state.enabled is None else [state.enabled[0], state.enabled[1].version, state.enabled[1].author]
    return [
        enabled,
        [[name, digest, st.version, st.author] for name, digest, st in state.users],
        [[u, p, s, present, st.version, st.author] for u, p, s, present, st in state.grants],
    ]


def _stamp(version: Any, author: Any) -> Stamp:
    if not (isinstance(version, int) and not isinstance(version, bool) and 0 < version < 1 << 62):
        raise SecurityError("malformed record version")
    if not (isinstance(author, str) and 0 < len(author) <= 255):
        raise SecurityError("malformed record author")
    return Stamp(version, author)


def from_wire(data: Any) -> SecurityState:
    if not (isinstance(data, list) and len(data) == 3):
        raise SecurityError("malformed security state")
    raw_enabled, raw_users, raw_grants = data
    enabled = None
    if raw_enabled is not None:
        if not (isinstance(raw_enabled, list) and len(raw_enabled) == 3 and isinstance(raw_enabled[0], bool)):
            raise SecurityError("malformed security flag")
        enabled = (raw_enabled[0], _stamp(raw_enabled[1], raw_enabled[2]))
    if not isinstance(raw_users, list) or not isinstance(raw_grants, list):
        raise SecurityError("malformed users or grants")
    users: dict[str, tuple[str, bytes, Stamp]] = {}
    for entry in raw_users:
        if not (isinstance(entry, list) and len(entry) == 4 and isinstance(entry[0], str)):
            raise SecurityError("malformed user")
        name, digest = entry[0], entry[1]
        if check_user_name(name) is not None or not isinstance(digest, bytes) or not check_stored_hash(digest):
            raise SecurityError("malformed user")
        if name in users:
            raise SecurityError(f"user {name!r} twice")
        users[name] = (name, digest, _stamp(entry[2], entry[3]))
    grants: dict[tuple[str, str, str], tuple[str, str, str, bool, Stamp]] = {}
    for entry in raw_grants:
        if not (isinstance(entry, list) and len(entry) == 6 and all(isinstance(x, str) for x in entry[:3])):
            raise SecurityError("malformed grant")
        user, perm, scope, present = entry[0], entry[1], entry[2], entry[3]
        if check_grant(perm, scope) is not None or check_user_name(user) is not None or not isinstance(present, bool):
            raise SecurityError("malformed grant")
        if (user, perm, scope) in grants:
            raise SecurityError("grant twice")
        grants[(user, perm, scope)] = (user, perm, scope, present, _stamp(entry[4], entry[5]))
    return SecurityState(enabled, tuple(sorted(users.values())), tuple(sorted(grants.values())))


def parse_permissions(text: str) -> list[str]:
    """PERM[,PERM...] as an operator gives it."""
    perms = [p.strip() for p in text.split(",") if p.strip()]
    if not perms:
        raise SecurityError("no permission given")
    return perms


def members_may_enable(members: Iterable[tuple[str, bool]], is_loopback: Any) -> str | None:
    """Why security may not be turned on for these members ((host, tls) pairs), or None: every member
    must serve TLS or serve loopback only, or passwords would cross a network in clear."""
    for host, tls in members:
        if not tls and not is_loopback(host):
            return f"a member on {host} serves without TLS: enable TLS on every member first"
    return None
