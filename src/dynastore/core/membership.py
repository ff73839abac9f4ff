"""The cluster state every node holds: members, the ring (and the ring it is moving to), bucket
properties. Spread by gossip; merged by a rule that converges whatever order updates arrive in.

Theory of operation
-------------------
- Members are records versioned per member; a merge keeps, per name, the record with the greater
  (version, status rank, address...) so any two nodes that have seen the same records agree.
- Exactly one node, the *claimant* (the smallest name among valid members), turns membership into
  rings. Each ring it publishes carries (version, claimant); a merge keeps the greater pair, so two
  nodes that both believed themselves claimant during a partition still end with one ring. Operators
  never edit rings: they change member records (join, leave, remove) and the claimant follows.
- A ring change is a *transition*: `owners` stay authoritative while `next_owners` is being filled
  by ownership handoff. Each (partition, receiving node) transfer that completes is recorded in
  `done` (a grow-only set, merged by union). A partition whose transfers are all done is served by
  the next ring; when all are done the claimant makes the next ring current.
- Bucket properties are per-bucket records versioned by (version, author); bucket types
  (buckettypes.py) are per-type records of properties and an active flag, versioned the same way.
- Staged membership changes (clusterplan.py): one record per node a staged change concerns, versioned
  by (version, author) like member records, so every node gossips, persists and shows the same plan.
- Security metadata (security.py): whether security is on, users and their password hashes, and
  grants, each a record versioned by (version, author), so concurrent changes merge deterministically
  and a grant made at one node holds at every node once gossip has spread it.

Everything here is pure; encoding is canonical (sorted), so equal states have equal digests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from dynastore.core import bucketprops, buckettypes, security
from dynastore.core.ring import Ring, claim
from dynastore.core.security import SecurityState

STATUSES = ("joining", "valid", "leaving", "exiting", "removed")
_RANK = {status: i for i, status in enumerate(STATUSES)}
# Members that own (or are about to own) partitions.
OWNING = ("joining", "valid")
# Members still in the cluster and reachable by gossip.
ACTIVE = ("joining", "valid", "leaving")


class StateError(ValueError):
    """Bytes that should hold a cluster state do not."""


@dataclass(frozen=True, slots=True, order=True)
class Member:
    name: str
    host: str
    peer_port: int
    http_port: int
    weight: int = 1
    status: str = "valid"
    version: int = 1
    # Whether the member serves its HTTP API and peer links over TLS.
    tls: bool = False

    def key(self) -> tuple[int, int, str, int, int, int, bool]:
        return (self.version, _RANK[self.status], self.host, self.peer_port, self.http_port, self.weight, self.tls)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.peer_port)


@dataclass(frozen=True, slots=True)
class RingState:
    version: int
    claimant: str
    owners: tuple[str, ...]
    next_owners: tuple[str, ...] | None = None
    done: frozenset[tuple[int, str]] = frozenset()
    # Rings looked up for this state (every request asks; hashing 64 owners each time is not free).
    _rings: dict[bool, Ring] = field(default_factory=dict, init=False, compare=False, hash=False, repr=False)

    def key(self) -> tuple[int, str]:
        return (self.version, self.claimant)

    @property
    def ring(self) -> Ring:
        ring = self._rings.get(False)
        if ring is None:
            ring = self._rings[False] = _ring_of(self.owners)
        return ring

    @property
    def next_ring(self) -> Ring | None:
        if self.next_owners is None:
            return None
        ring = self._rings.get(True)
        if ring is None:
            ring = self._rings[True] = _ring_of(self.next_owners)
        return ring


_RINGS: dict[tuple[str, ...], Ring] = {}


def _ring_of(owners: tuple[str, ...]) -> Ring:
    # Rings cache their walks; sharing one Ring per owner tuple keeps that cache warm across states.
    ring = _RINGS.get(owners)
    if ring is None:
        if len(_RINGS) > 64:
            _RINGS.clear()
        ring = _RINGS[owners] = Ring(owners)
    return ring


@dataclass(frozen=True, slots=True)
class BucketProps:
    props: tuple[tuple[str, Any], ...]
    version: int
    author: str

    def key(self) -> tuple[int, str]:
        return (self.version, self.author)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.props)


@dataclass(frozen=True, slots=True)
class BucketType:
    """A bucket type's record: its properties, whether it is active, and its stamp."""

    props: tuple[tuple[str, Any], ...]
    active: bool
    version: int
    author: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.props)


# What a staged record asks for: nothing (cleared or committed), or one of Riak's staged changes.
STAGED_ACTIONS = ("", "join", "leave", "remove", "replace")


@dataclass(frozen=True, slots=True, order=True)
class Staged:
    """A staged change for `node` (clusterplan.py). `target` is the replacement of a replace;
    `committed` marks a replace that was committed and waits for the ring that carries it out."""

    node: str
    action: str
    target: str = ""
    committed: bool = False
    version: int = 1
    author: str = ""

    def key(self) -> tuple[int, str, int, str, bool]:
        return (self.version, self.author, STAGED_ACTIONS.index(self.action), self.target, self.committed)

    @property
    def pending(self) -> bool:
        """Staged and not yet committed: what `cluster plan` shows and `cluster clear` drops."""
        return self.action != "" and not self.committed


@dataclass(frozen=True, slots=True)
class ClusterState:
    cluster: str
    members: tuple[Member, ...]
    ring: RingState
    buckets: tuple[tuple[bytes, BucketProps], ...] = ()
    security: SecurityState = security.EMPTY
    types: tuple[tuple[str, BucketType], ...] = ()
    staged: tuple[Staged, ...] = ()
    # The encoding (and digest) of this immutable state, made once: every gossip round sends the
    # digest and answers compare it, and at a thousand members encoding is most of a round's work.
    _encoded: dict[str, bytes] = field(default_factory=dict, init=False, compare=False, hash=False, repr=False)

    # --- Queries ---------------------------------------------------------------------------------

    def member(self, name: str) -> Member | None:
        for m in self.members:
            if m.name == name:
                return m
        return None

    def is_member(self, name: str) -> bool:
        """Whether `name` is a member that has not been removed (strangers may only ask to join)."""
        m = self.member(name)
        return m is not None and m.status != "removed"

    def names(self, statuses: Iterable[str] = ACTIVE) -> list[str]:
        wanted = set(statuses)
        return [m.name for m in self.members if m.status in wanted]

    def bucket(self, bucket: bytes) -> dict[str, Any]:
        for name, props in self.buckets:
            if name == bucket:
                return props.as_dict()
        return {}

    def bucket_record(self, bucket: bytes) -> BucketProps | None:
        for name, props in self.buckets:
            if name == bucket:
                return props
        return None

    def bucket_type(self, name: str) -> BucketType | None:
        for type_name, record in self.types:
            if type_name == name:
                return record
        return None

    def staged_for(self, node: str) -> Staged | None:
        for record in self.staged:
            if record.node == node:
                return record
        return None

    def claimant(self) -> str | None:
        valid = self.names(("valid",))
        if valid:
            return min(valid)
        joining = self.names(("joining",))
        return min(joining) if joining else None

    # --- Updates (each returns a new state) ------------------------------------------------------

    def with_member(self, member: Member) -> ClusterState:
        others = tuple(m for m in self.members if m.name != member.name)
        return replace(self, members=tuple(sorted((*others, member))))

    def with_bucket(self, bucket: bytes, props: Mapping[str, Any], author: str) -> ClusterState:
        current = self.bucket_record(bucket)
        version = 1 if current is None else current.version + 1
        record = BucketProps(tuple(sorted(props.items())), version, author)
        others = tuple((b, p) for b, p in self.buckets if b != bucket)
        return replace(self, buckets=tuple(sorted((*others, (bucket, record)))))

    def with_type(self, name: str, props: Mapping[str, Any], active: bool, author: str) -> ClusterState:
        current = self.bucket_type(name)
        version = 1 if current is None else current.version + 1
        record = BucketType(tuple(sorted(props.items())), active, version, author)
        others = tuple((n, t) for n, t in self.types if n != name)
        return replace(self, types=tuple(sorted((*others, (name, record)))))

    def with_staged(
        self, node: str, action: str, author: str, target: str = "", committed: bool = False
    ) -> ClusterState:
        """The staged record of `node` rewritten (action "" drops the change), one version up."""
        assert action in STAGED_ACTIONS
        current = self.staged_for(node)
        version = 1 if current is None else current.version + 1
        record = Staged(node, action, target, committed, version, author)
        others = tuple(r for r in self.staged if r.node != node)
        return replace(self, staged=tuple(sorted((*others, record))))

    def with_security(self, state: SecurityState) -> ClusterState:
        return replace(self, security=state)

    def digest(self) -> bytes:
        digest = self._encoded.get("digest")
        if digest is None:
            digest = self._encoded["digest"] = hashlib.blake2b(encode(self), digest_size=16).digest()
        return digest


def new_cluster(
    cluster: str, founder: Member, ring_size: int, n_val: int, security_enabled: bool = False
) -> ClusterState:
    """The state of a one-node cluster, as a node started alone creates it."""
    founder = replace(founder, status="valid")
    owners = claim({founder.name: founder.weight}, ring_size, n_val).owners
    guard = security.EMPTY.with_enabled(security_enabled, founder.name) if security_enabled else security.EMPTY
    return ClusterState(cluster, (founder,), RingState(1, founder.name, owners), (), guard)


# --- Merge ---------------------------------------------------------------------------------------


def merge(a: ClusterState, b: ClusterState) -> ClusterState:
    """Join two views of the same cluster (commutative, associative, idempotent)."""
    if a.cluster != b.cluster:
        raise StateError(f"cannot merge cluster {a.cluster!r} with {b.cluster!r}")
    members: dict[str, Member] = {m.name: m for m in a.members}
    for m in b.members:
        mine = members.get(m.name)
        if mine is None or m.key() > mine.key():
            members[m.name] = m
    buckets: dict[bytes, BucketProps] = dict(a.buckets)
    for bucket, props in b.buckets:
        mine_props = buckets.get(bucket)
        if mine_props is None or _props_order(props) > _props_order(mine_props):
            buckets[bucket] = props
    types: dict[str, BucketType] = dict(a.types)
    for name, record in b.types:
        mine_type = types.get(name)
        if mine_type is None or _type_order(record) > _type_order(mine_type):
            types[name] = record
    staged: dict[str, Staged] = {r.node: r for r in a.staged}
    for r in b.staged:
        mine_staged = staged.get(r.node)
        if mine_staged is None or r.key() > mine_staged.key():
            staged[r.node] = r
    return ClusterState(
        a.cluster,
        tuple(sorted(members.values())),
        _merge_rings(a.ring, b.ring),
        tuple(sorted(buckets.items())),
        security.merge(a.security, b.security),
        tuple(sorted(types.items())),
        tuple(sorted(staged.values())),
    )


def _props_order(p: BucketProps) -> tuple[int, str, bytes]:
    return (p.version, p.author, msgpack.packb(list(p.props), use_bin_type=True))


def _type_order(t: BucketType) -> tuple[bool, int, str, bytes]:
    # An active record beats every inactive one: a type once active stays active with its datatype,
    # whatever a node that had not heard of the activation changed concurrently.
    return (t.active, t.version, t.author, msgpack.packb(list(t.props), use_bin_type=True))


def _merge_rings(a: RingState, b: RingState) -> RingState:
    if a.key() != b.key():
        return a if a.key() > b.key() else b
    if a.owners == b.owners and a.next_owners == b.next_owners:
        return replace(a, done=a.done | b.done)
    # One claimant publishes one ring per version; differing content under the same key can only
    # come from a damaged peer. Pick deterministically so that every node still converges.
    return a if _ring_bytes(a) >= _ring_bytes(b) else b


def _ring_bytes(r: RingState) -> bytes:
    return msgpack.packb(_ring_to_wire(r), use_bin_type=True)  # type: ignore[no-any-return]


# --- Encoding ------------------------------------------------------------------------------------


def _ring_to_wire(r: RingState) -> list[Any]:
    return [
        r.version,
        r.claimant,
        list(r.owners),
        None if r.next_owners is None else list(r.next_owners),
        sorted([p, n] for p, n in r.done),
    ]


# 1: members, ring, buckets. 2: members say whether they serve TLS, and security metadata. 3: bucket
# types. 4: staged membership changes. Versions 1 to 3 (data directories of earlier releases) are read
# (with nothing staged) and written back as 4.
STATE_FORMAT = 4
# Staged records a state may hold (one per node a change concerns; records are never deleted).
STAGED_MAX = 4096


def _member_to_wire(m: Member) -> list[Any]:
    return [m.name, m.host, m.peer_port, m.http_port, m.weight, m.status, m.version, m.tls]


def encode(state: ClusterState) -> bytes:
    encoded = state._encoded.get("state")
    if encoded is None:
        encoded = state._encoded["state"] = _encode(state)
    return encoded


def _encode(state: ClusterState) -> bytes:
    data = [
        STATE_FORMAT,
        state.cluster,
        [_member_to_wire(m) for m in state.members],
        _ring_to_wire(state.ring),
        [[b, list(map(list, p.props)), p.version, p.author] for b, p in state.buckets],
        security.to_wire(state.security),
        [[n, list(map(list, t.props)), t.active, t.version, t.author] for n, t in state.types],
        [[r.node, r.action, r.target, r.committed, r.version, r.author] for r in state.staged],
    ]
    return msgpack.packb(data, use_bin_type=True)  # type: ignore[no-any-return]


def encode_member(m: Member) -> bytes:
    return msgpack.packb(_member_to_wire(m), use_bin_type=True)  # type: ignore[no-any-return]


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise StateError(what)


def _int(x: Any, lo: int = 0, hi: int = 1 << 62) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi


def _member_from(data: Any) -> Member:
    _need(isinstance(data, list) and len(data) in (7, 8), "malformed member")
    name, host, peer_port, http_port, weight, status, version = data[:7]
    tls = data[7] if len(data) == 8 else False
    _need(isinstance(tls, bool), "malformed member TLS flag")
    _need(isinstance(name, str) and 0 < len(name) <= 255, "malformed member name")
    _need(isinstance(host, str) and 0 < len(host) <= 255, "malformed member host")
    _need(_int(peer_port, 0, 65535) and _int(http_port, 0, 65535), "malformed member port")
    _need(_int(weight, 1, 1000), "malformed member weight")
    _need(status in _RANK, "malformed member status")
    _need(_int(version, 0), "malformed member version")
    return Member(name, host, peer_port, http_port, weight, status, version, tls)


def decode_member(raw: bytes) -> Member:
    try:
        data = msgpack.unpackb(raw, raw=False)
    except Exception as exc:
        raise StateError(f"undecodable member: {exc}") from None
    return _member_from(data)


def _owners(data: Any, names: set[str]) -> tuple[str, ...]:
    _need(isinstance(data, list) and len(data) > 0 and len(data) & (len(data) - 1) == 0, "malformed owners")
    # Every owner a member's name (so a string): one set test of the Q owners, not a test of each.
    try:
        known = names.issuperset(data)
    except TypeError:
        known = False  # an unhashable owner
    _need(known, "ring owner is not a member")
    return tuple(data)


# States decoded lately, by their bytes: after a change every peer sends the same state, and at a
# thousand members decoding (and checking) one costs milliseconds. Bounded in count and in bytes.
_DECODED: dict[bytes, ClusterState] = {}
DECODED_COUNT_MAX = 8
DECODED_BYTES_MAX = 16 * 1024 * 1024


def decode(raw: bytes) -> ClusterState:
    """The state `raw` holds (raises StateError for bytes that hold none)."""
    known = _DECODED.get(raw)
    if known is not None:
        return known
    state = _decode(raw)
    if len(raw) <= DECODED_BYTES_MAX // DECODED_COUNT_MAX:
        if len(_DECODED) >= DECODED_COUNT_MAX:
            del _DECODED[next(iter(_DECODED))]
        _DECODED[bytes(raw)] = state
    return state


def _decode(raw: bytes) -> ClusterState:
    try:
        data = msgpack.unpackb(raw, raw=False)
    except Exception as exc:
        raise StateError(f"undecodable cluster state: {exc}") from None
    _need(isinstance(data, list) and len(data) >= 1, "malformed cluster state")
    _need(
        data[0] in (1, 2, 3, STATE_FORMAT), f"cluster state of format {data[0]!r}, this node reads 1 to {STATE_FORMAT}"
    )
    _need(len(data) == {1: 5, 2: 6, 3: 7}.get(data[0], 8), "malformed cluster state")
    cluster, raw_members, raw_ring, raw_buckets = data[1:5]
    try:
        guard = security.EMPTY if data[0] == 1 else security.from_wire(data[5])
    except security.SecurityError as exc:
        raise StateError(str(exc)) from None
    _need(isinstance(cluster, str), "malformed cluster name")
    _need(isinstance(raw_members, list) and len(raw_members) > 0, "malformed members")
    members = [_member_from(m) for m in raw_members]
    names = {m.name for m in members}
    _need(len(names) == len(members), "duplicate member")
    _need(isinstance(raw_ring, list) and len(raw_ring) == 5, "malformed ring")
    version, claimant, owners, next_owners, done = raw_ring
    _need(_int(version) and isinstance(claimant, str), "malformed ring version")
    ring_owners = _owners(owners, names)
    next_ring = None if next_owners is None else _owners(next_owners, names)
    _need(next_ring is None or len(next_ring) == len(ring_owners), "next ring has another size")
    _need(isinstance(done, list), "malformed transfers")
    done_set: set[tuple[int, str]] = set()
    for entry in done:
        _need(isinstance(entry, list) and len(entry) == 2, "malformed transfer")
        p, n = entry
        _need(_int(p, 0, len(ring_owners) - 1) and isinstance(n, str), "malformed transfer")
        done_set.add((p, n))
    _need(isinstance(raw_buckets, list), "malformed buckets")
    buckets: list[tuple[bytes, BucketProps]] = []
    for entry in raw_buckets:
        _need(isinstance(entry, list) and len(entry) == 4, "malformed bucket")
        b, props, pv, author = entry
        _need(isinstance(b, bytes) and isinstance(props, list), "malformed bucket")
        _need(_int(pv) and isinstance(author, str), "malformed bucket version")
        pairs: list[tuple[str, Any]] = []
        for pair in props:
            _need(isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str), "malformed prop")
            pairs.append((pair[0], pair[1]))
        _need(len({name for name, _ in pairs}) == len(pairs), "a bucket property given twice")
        problem = bucketprops.stored_problem(dict(pairs))
        _need(problem is None, f"bucket {b!r}: {problem}")
        buckets.append((b, BucketProps(tuple(sorted(pairs)), pv, author)))
    _need(len({b for b, _ in buckets}) == len(buckets), "a bucket given twice")
    types = _types_from(data[6] if data[0] >= 3 else [])
    staged = _staged_from(data[7] if data[0] >= 4 else [], names)
    return ClusterState(
        cluster,
        tuple(sorted(members)),
        RingState(version, claimant, ring_owners, next_ring, frozenset(done_set)),
        tuple(sorted(buckets)),
        guard,
        types,
        staged,
    )


def _staged_from(raw: Any, names: set[str]) -> tuple[Staged, ...]:
    _need(isinstance(raw, list) and len(raw) <= STAGED_MAX, "malformed staged changes")
    records: dict[str, Staged] = {}
    for entry in raw:
        _need(isinstance(entry, list) and len(entry) == 6, "malformed staged change")
        node, action, target, committed, version, author = entry
        _need(isinstance(node, str) and node in names and node not in records, "staged change for no member")
        _need(action in STAGED_ACTIONS and isinstance(committed, bool), "malformed staged change")
        _need(isinstance(target, str) and (target in names if action == "replace" else target == ""), "bad target")
        _need(not committed or action == "replace", "only a replace stays committed")
        _need(_int(version) and isinstance(author, str), "malformed staged change version")
        records[node] = Staged(node, action, target, committed, version, author)
    return tuple(sorted(records.values()))


def _props_from(raw: Any) -> dict[str, Any]:
    _need(isinstance(raw, list), "malformed properties")
    pairs: list[tuple[str, Any]] = []
    for pair in raw:
        _need(isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str), "malformed prop")
        pairs.append((pair[0], pair[1]))
    _need(len({name for name, _ in pairs}) == len(pairs), "a property given twice")
    return dict(pairs)


def _types_from(raw: Any) -> tuple[tuple[str, BucketType], ...]:
    _need(isinstance(raw, list), "malformed bucket types")
    types: dict[str, BucketType] = {}
    for entry in raw:
        _need(isinstance(entry, list) and len(entry) == 5, "malformed bucket type")
        name, raw_props, active, version, author = entry
        _need(isinstance(name, str) and buckettypes.name_problem(name) is None, "malformed bucket type name")
        _need(name not in types, "a bucket type given twice")
        _need(isinstance(active, bool) and _int(version) and isinstance(author, str), "malformed bucket type")
        props = _props_from(raw_props)
        problem = buckettypes.check_props(props)
        _need(problem is None, f"bucket type {name!r}: {problem}")
        types[name] = BucketType(tuple(sorted(props.items())), active, version, author)
    return tuple(sorted(types.items()))
