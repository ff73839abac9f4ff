"""Client contexts and stored objects survive encoding exactly, and anything malformed is a clear error."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynastore.core import context as ctxcodec
from dynastore.core import objects
from dynastore.core.context import ContextError, coordinator_hint
from dynastore.core.objects import Content, ObjectError
from dynastore.core.versions import Clock, Context, Dot, Versioned

SECRET = b"cluster-secret"
actors = st.binary(min_size=1, max_size=24)
counters = st.integers(1, (1 << 63) - 1)


@st.composite
def contexts(draw: st.DrawFn) -> Context:
    vector = draw(st.dictionaries(actors, counters, max_size=8))
    dots = draw(st.frozensets(st.builds(Dot, actors, counters), max_size=4))
    coordinator = draw(st.one_of(st.none(), st.text(min_size=1, max_size=20)))
    return Context(tuple(sorted(vector.items())), dots, coordinator)


@st.composite
def stored_objects(draw: st.DrawFn) -> Versioned[Content]:
    entries = draw(st.dictionaries(actors, st.tuples(counters, st.integers(0, 1 << 50)), min_size=0, max_size=5))
    clock = Clock.from_mapping(entries)
    siblings: dict[Dot, Content] = {}
    for actor, (counter, _) in entries.items():
        if draw(st.booleans()):
            dot = Dot(actor, draw(st.integers(1, counter)))
            siblings[dot] = Content(
                draw(st.binary(max_size=64)),
                draw(st.sampled_from(["text/plain", "application/json"])),
                draw(st.one_of(st.none(), st.just("utf-8"))),
                None,
                tuple(draw(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)).items()),
                draw(st.integers(0, 1 << 52)),
                draw(st.booleans()),
            )
    return Versioned(clock, tuple(sorted(siblings.items(), key=lambda p: p[0])))


@settings(max_examples=300, deadline=None)
@given(ctx=contexts(), bucket=st.binary(max_size=10), key=st.binary(max_size=10))
def test_contexts_round_trip_exactly(ctx: Context, bucket: bytes, key: bytes) -> None:
    """Encoding then decoding a context gives back the same vector, dots and coordinator."""
    text = ctxcodec.encode(ctx, SECRET, bucket, key)
    assert ctxcodec.decode(text, SECRET, bucket, key) == ctx


@settings(max_examples=300, deadline=None)
@given(ctx=contexts(), position=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_a_corrupted_context_is_rejected_never_misread(ctx: Context, position: int, bit: int) -> None:
    """Flipping any bit of an encoded context gives ContextError, never a different context."""
    raw = bytearray(base64.b64decode(ctxcodec.encode(ctx, SECRET, b"b", b"k")))
    raw[position % len(raw)] ^= 1 << bit
    with pytest.raises(ContextError):
        ctxcodec.decode(base64.b64encode(bytes(raw)).decode(), SECRET, b"b", b"k")


@settings(max_examples=500, deadline=None)
@given(junk=st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_hostile_input_gives_only_context_errors(junk: bytes | str) -> None:
    """Arbitrary bytes or text as a vclock raise ContextError and nothing else."""
    with pytest.raises(ContextError):
        ctxcodec.decode(junk, SECRET, b"b", b"k")
    if isinstance(junk, bytes):
        with pytest.raises(ContextError):
            ctxcodec.decode(base64.b64encode(junk), SECRET, b"b", b"k")


def test_a_context_from_another_key_or_cluster_is_rejected() -> None:
    """A context is bound to its bucket, key and cluster secret, so it cannot cause a wrong merge elsewhere."""
    text = ctxcodec.encode(Context(((b"a#1", 5),)), SECRET, b"bucket", b"key")
    with pytest.raises(ContextError, match="does not belong"):
        ctxcodec.decode(text, SECRET, b"bucket", b"other")
    with pytest.raises(ContextError, match="does not belong"):
        ctxcodec.decode(text, b"another-secret", b"bucket", b"key")


def test_a_forged_context_with_a_valid_mac_but_bad_structure_is_rejected() -> None:
    """Even with the right key, structural limits hold: too many extra dots is an error."""
    ctx = Context((), frozenset(Dot(b"a", i) for i in range(1, 20)))
    text = ctxcodec.encode(ctx, SECRET, b"b", b"k")
    with pytest.raises(ContextError, match="out of range"):
        ctxcodec.decode(text, SECRET, b"b", b"k", extra_dots_max=16)


@settings(max_examples=300, deadline=None)
@given(obj=stored_objects())
def test_objects_round_trip_exactly(obj: Versioned[Content]) -> None:
    """An object encoded for disk or wire decodes to the same clock and siblings."""
    assert objects.decode(objects.encode(obj)) == obj


@settings(max_examples=500, deadline=None)
@given(junk=st.binary(max_size=300))
def test_garbage_bytes_give_only_object_errors(junk: bytes) -> None:
    """Undecodable or malformed object bytes raise ObjectError and nothing else."""
    try:
        objects.decode(junk)
    except ObjectError:
        pass


@settings(max_examples=300, deadline=None)
@given(obj=stored_objects(), position=st.integers(0, 10_000), value=st.integers(0, 255))
def test_a_damaged_object_decodes_to_a_valid_object_or_an_error(
    obj: Versioned[Content], position: int, value: int
) -> None:
    """Whatever a damaged encoding turns into, it is either rejected or satisfies every invariant."""
    raw = bytearray(objects.encode(obj))
    raw[position % len(raw)] = value
    try:
        decoded = objects.decode(bytes(raw))
    except ObjectError:
        return
    decoded.check()


def test_tombstones_and_resolution_to_one_value() -> None:
    """An object holding only deletions is a tombstone; one value per key is the latest timestamp."""
    clock = Clock(((b"a", 2, 0),))
    older = (Dot(b"a", 1), Content(b"old", last_modified_us=5))
    newer = (Dot(b"a", 2), Content(b"new", last_modified_us=9))
    obj = Versioned(clock, (older, newer))
    assert objects.resolve(obj).siblings == (newer,)
    assert not objects.is_tombstone(obj)
    dead = Versioned(clock, ((Dot(b"a", 2), objects.tombstone(10)),))
    assert objects.is_tombstone(dead)
    assert objects.live(dead) == []
    assert objects.vtag(Dot(b"a", 1)) != objects.vtag(Dot(b"a", 2))


def test_a_client_reads_the_coordinator_a_context_names_without_the_key_and_gets_none_from_garbage() -> None:
    """The ring-aware client routes a write to the replica its context names (a hint it cannot verify:
    the node verifies the MAC); text that is no context gives None, never an exception."""
    named = ctxcodec.encode(Context(((b"a", 3),), frozenset(), "node2"), b"secret-key-0123456789", b"b", b"k")
    assert coordinator_hint(named) == "node2"
    assert coordinator_hint(ctxcodec.encode(Context(((b"a", 3),)), b"s" * 16, b"b", b"k")) is None
    for garbage in ("", "!!!", "AAAA", named[:-8], "é"):
        assert coordinator_hint(garbage) is None
