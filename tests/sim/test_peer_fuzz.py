"""Hostile peers, through the simulator: a member sends messages that decode (they pass the codec's
type checks) but carry values no honest node would send — partitions out of range, empty names,
storage keys of the wrong layout, replies to requests never made, states naming a member twice.

Whatever arrives, the node raises nothing but PeerError (the shell drops such a peer), trips no
assertion, and goes on serving and replicating; a stranger's messages change nothing at all."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynastore.core import keys, membership, messages
from dynastore.core.messages import ClientGet, ClientPut, Message, NotFound, Ok, PeerError
from dynastore.core.objects import Content, Object
from dynastore.core.versions import Clock, Context, Dot, Versioned
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster
from dynastore.sim.run import SIM_SETTINGS

SETTINGS = Settings().with_mapping(SIM_SETTINGS)
RING = SETTINGS.ring_size

INTS = st.sampled_from(
    [-(2**63), -1, 0, 1, 2, 3, RING - 1, RING, RING + 1, 255, 65535, 2**31, 2**63 - 1]
) | st.integers(-3, 40)
NAMES = st.sampled_from(["", "n0", "n1", "n2", "n3", "@127.0.0.1:1", "x" * 300, "\x00"]) | st.text(max_size=6)
STORAGE_KEYS = [keys.encode(p, b"b", b"k%d" % i) for p in (0, 3, RING - 1) for i in range(3)]
BYTES = st.sampled_from(
    [b"", b"\x00", b"\xff" * 8, b"b", b"k0", b"x" * 600, b"\x00\x00\x00\x01\x00\x09b", b"i" * 16, *STORAGE_KEYS]
) | st.binary(max_size=24)
DOT = Dot(b"n1.1", 1)
SIMPLE: Object = Versioned(Clock(((b"n1.1", 1, 5),)), ((DOT, Content(b"v")),))
TOMBSTONE: Object = Versioned(Clock(((b"n1.1", 2, 5),)), ((Dot(b"n1.1", 2), Content(b"", deleted=True)),))
WIDE: Object = Versioned(
    Clock(tuple((b"a%d.1" % i, 1, 5) for i in range(12))),
    tuple((Dot(b"a%d.1" % i, 1), Content(b"w" * 100)) for i in range(12)),
)
OBJECTS = st.sampled_from([SIMPLE, TOMBSTONE, WIDE, Versioned(Clock(()), ())])
CONTEXTS = st.none() | st.sampled_from([Context(((b"n1.1", 1),), frozenset()), Context((), frozenset({DOT}))])
CONTENTS = st.none() | st.sampled_from([Content(b"v"), Content(b"", deleted=True)])


def hint_items() -> st.SearchStrategy[Any]:
    return st.builds(messages.HintItem, BYTES, BYTES, OBJECTS)


def states() -> st.SearchStrategy[bytes]:
    """Gossiped states: garbage, and honest states bent (a member or a bucket twice, an empty name, an
    unknown status, a ring owner that is no member, a negative version)."""
    honest = SimCluster(3, SETTINGS).core("n0").cluster.with_bucket(b"b", {"n_val": 2}, "n0")

    def bent(choice: int) -> bytes:
        wire = msgpack.unpackb(membership.encode(honest), raw=False)
        members, ring, buckets = wire[2], wire[3], wire[4]
        if choice == 1:
            members.append(list(members[0]))
        elif choice == 2:
            members[0][0] = ""
        elif choice == 3:
            members[0][5] = "dancing"
        elif choice == 4:
            ring[2][0] = "nobody"
        elif choice == 5:
            ring[0] = -1
        elif choice == 6:
            buckets.append(list(buckets[0]))
        elif choice == 7:
            buckets[0][1].append(["n_val", -5])
        elif choice == 8:
            ring[4].append([RING + 3, "n0"])
        return bytes(msgpack.packb(wire, use_bin_type=True))

    return st.integers(0, 8).map(bent) | st.binary(max_size=40)


STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "int": INTS,
    "bool": st.booleans(),
    "str": NAMES,
    "bytes": BYTES,
    "str | None": st.none() | NAMES,
    "bytes | None": st.none() | BYTES,
    "Object": OBJECTS,
    "Object | None": st.none() | OBJECTS,
    "Context | None": CONTEXTS,
    "Content | None": CONTENTS,
    "Dot | None": st.none() | st.sampled_from([DOT, Dot(b"x" * 255, 2**63 - 1)]),
    # Data-type operations as a peer may forward them, honest or not (the coordinator parses them).
    "DtUpdate | None": st.none()
    | st.builds(
        messages.DtUpdate,
        st.sampled_from(["counter", "set", "map", "hll", "tree", ""]),
        st.integers(-1, 20),
        st.sampled_from(
            [b"", b'{"increment": 1}', b'{"add": "x"}', b'{"remove": "x"}', b'{"update": {"a_flag": "enable"}}']
        )
        | st.binary(max_size=40),
        st.none() | st.lists(st.tuples(st.sampled_from([DOT.actor, b"q" * 300]), INTS), max_size=3).map(tuple),
    ),
    "ForwardStatus": st.sampled_from(messages.FORWARD_STATUSES),
    "tuple[tuple[Dot, Content], ...]": st.lists(st.tuples(st.just(DOT), st.just(Content(b"v"))), max_size=3).map(tuple),
    "tuple[HintItem, ...]": st.lists(hint_items(), max_size=4).map(tuple),
    "tuple[bytes, ...]": st.lists(BYTES, max_size=5).map(tuple),
    "tuple[int, ...]": st.lists(INTS, max_size=5).map(tuple),
    "tuple[bool, ...]": st.lists(st.booleans(), max_size=5).map(tuple),
}


def message_of(cls: type[Any]) -> st.SearchStrategy[Message]:
    fields = {}
    for field in dataclasses.fields(cls):
        kind = str(field.type)
        fields[field.name] = states() if (cls is messages.GossipState and field.name == "state") else STRATEGIES[kind]
    return st.builds(cls, **fields)


HOSTILE = st.one_of([message_of(cls) for cls in messages.MESSAGE_TYPES])


def cluster() -> SimCluster:
    c = SimCluster(3, SETTINGS)
    for i in range(3):
        answer = c.request("n0", ClientPut(b"b", b"k%d" % i, None, Content(b"v%d" % i)))
        assert isinstance(answer, Ok), answer
    return c


def deliver(c: SimCluster, src: str, dst: str, msg: Message) -> bool:
    """Put `msg` through the wire codec and hand it to `dst` as the shell would; False when the codec or
    the node refused it with PeerError (the shell would drop the peer)."""
    try:
        decoded = messages.from_wire(msgpack.unpackb(msgpack.packb(messages.to_wire(msg), use_bin_type=True)))
        c.core(dst).on_message(src, decoded, c.now_ms)
    except PeerError:
        return False
    c._flush(dst)
    return True


def still_serves(c: SimCluster) -> None:
    c.settle(3000)
    for node in ("n0", "n1", "n2"):
        answer = c.request(node, ClientPut(b"after", node.encode(), None, Content(b"fine")))
        assert isinstance(answer, Ok), (node, answer)
    c.settle(2000)
    for node in ("n0", "n1", "n2"):
        for writer in ("n0", "n1", "n2"):
            found = c.request(node, ClientGet(b"after", writer.encode(), r=3))
            assert isinstance(found, Ok) and found.found is not None, (node, writer, found)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(HOSTILE, min_size=1, max_size=12))
def test_a_member_sending_hostile_messages_raises_only_peer_errors_and_the_cluster_keeps_serving(
    hostile: list[Message],
) -> None:
    c = cluster()
    for msg in hostile:
        deliver(c, "n1", "n0", msg)
    still_serves(c)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(HOSTILE, min_size=1, max_size=12))
def test_a_stranger_sending_anything_changes_nothing(hostile: list[Message]) -> None:
    c = cluster()
    core = c.core("n0")
    before = (core.cluster, dict(core.engine._view._areas["data"]))  # type: ignore[attr-defined]
    for msg in hostile:
        deliver(c, "mallory", "n0", msg)
    assert core.cluster == before[0]
    assert dict(core.engine._view._areas["data"]) == before[1]  # type: ignore[attr-defined]
    found = c.request("n0", ClientGet(b"b", b"k0"))
    assert isinstance(found, Ok | NotFound)
    still_serves(c)


def bent_state(change: str) -> bytes:
    honest = SimCluster(3, SETTINGS).core("n0").cluster.with_bucket(b"b", {"n_val": 2}, "n0")
    wire = msgpack.unpackb(membership.encode(honest), raw=False)
    if change == "bucket twice":
        wire[4].append(list(wire[4][0]))
    elif change == "member twice":
        wire[2].append(list(wire[2][0]))
    else:
        wire[4][0][1].append(["n_val", -5])
    return bytes(msgpack.packb(wire, use_bin_type=True))


@pytest.mark.parametrize(
    "msg",
    [
        messages.ReplicaPut(7, b"b", b"k", SIMPLE, "", False),
        messages.ListKeys(7, b"b", -1, b""),
        messages.HandoffPull(7, b"t", -1, b"", False),
        messages.TreeRequest(7, -1, 3, 0, (0,)),
        messages.SegmentRequest(7, RING, 3, (0,)),
        messages.ObjectsRequest(7, (b"\x00\x00",)),
        messages.HintDelivery(7, (messages.HintItem(b"", b"k", SIMPLE),), (False,)),
        messages.HintDelivery(7, (messages.HintItem(b"b", b"k", SIMPLE),), ()),
    ],
    ids=lambda msg: type(msg).__name__,
)
def test_what_once_raised_in_a_handler_is_refused_as_a_peer_error_and_changes_nothing(msg: Message) -> None:
    """An empty hint owner (an assertion), negative partitions (OverflowError), a stored key of the
    wrong layout, an empty bucket, flags that do not match the items: each is a PeerError now."""
    c = cluster()
    core = c.core("n0")
    before = dict(core.engine._view._areas["data"]), dict(core.engine._view._areas["hints"])  # type: ignore[attr-defined]
    assert not deliver(c, "n1", "n0", msg)
    after = dict(core.engine._view._areas["data"]), dict(core.engine._view._areas["hints"])  # type: ignore[attr-defined]
    assert after == before
    still_serves(c)


@pytest.mark.parametrize(
    "msg",
    [
        messages.ReplicaPut(7, b"b", b"k", SIMPLE, None, False, b"short", DOT),
        messages.ReplicaPut(7, b"b", b"k", SIMPLE, None, False, b"", DOT),
        messages.ReplicaPut(7, b"b", b"k", SIMPLE, None, False, b"i" * 16, None),
        messages.ForwardPut(7, b"b", b"k", None, Content(b"v"), "default", "default", "default", 100, False, 1, b""),
    ],
    ids=["short id", "dot without id", "id without dot", "forward without id"],
)
def test_a_write_id_of_the_wrong_size_or_a_dot_without_its_id_is_refused_and_changes_nothing(msg: Message) -> None:
    """A forwarded write always carries a 16-byte id and a replicated one names its dot exactly when
    it carries an id: anything else is a peer error, and nothing is written."""
    c = cluster()
    core = c.core("n0")
    before = dict(core.engine._view._areas["data"])  # type: ignore[attr-defined]
    assert not deliver(c, "n1", "n0", msg)
    assert dict(core.engine._view._areas["data"]) == before  # type: ignore[attr-defined]
    still_serves(c)


@pytest.mark.parametrize("change", ["bucket twice", "member twice", "n_val -5"])
def test_a_gossiped_state_naming_a_bucket_or_member_twice_or_a_bad_prop_is_ignored(change: str) -> None:
    """Such a state once raised TypeError (sorting two records of one bucket) or was adopted (n_val -5);
    now it is counted as a peer error and the node's state stays as it was."""
    c = cluster()
    core = c.core("n0")
    before = core.cluster
    errors = core.stats.peer_errors
    deliver(c, "n1", "n0", messages.GossipState(bent_state(change), True))
    assert core.cluster == before and core.stats.peer_errors == errors + 1
    still_serves(c)
