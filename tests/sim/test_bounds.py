"""Bounds in bytes, in a simulated cluster: anti-entropy steps, the hint store, and the total bytes of
one key's siblings; and what happens when concurrent writers merge a key past its bound."""

from __future__ import annotations

from dynastore.core import keys, objects
from dynastore.core.messages import ClientGet, ClientPut, Failure, HintDelivery, ObjectsReply, Ok
from dynastore.core.node import NodeCore
from dynastore.core.objects import Content
from dynastore.core.versions import Context, Dot, update
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster

KIB = 1024
BASE = Settings(ring_size=16, hinted_handoff_enabled=False, read_repair_enabled=False)


def stored(core: NodeCore, key: bytes) -> bytes | None:
    return core.engine.get("data", keys.encode(core.ring.partition_of(b"b", key), b"b", key))


def test_anti_entropy_carries_large_objects_in_steps_bounded_by_bytes_and_converges() -> None:
    """Twelve 200 KiB objects only one replica holds, and steps of at most 500 KiB: every objects reply
    and every push carries less than the bound before its last object, and both replicas end equal."""
    settings = BASE.replace(
        n_val=2, anti_entropy_interval_ms=1000, anti_entropy_segments_count=16, anti_entropy_batch_bytes_max=500 * KIB
    )
    c = SimCluster(2, settings)
    core = c.core("n0")
    for i in range(12):
        obj = update(None, Context(), Dot(b"writer#1", i + 1), Content(bytes([i]) * (200 * KIB)), 1)
        core._merge_into_data(b"b", b"k%02d" % i, obj, False, c.now_ms)
    c._flush("n0")
    carried: list[list[int]] = []
    original = c._send

    def spy(src: str, effect: object) -> None:
        msg = effect.msg  # type: ignore[attr-defined]
        if isinstance(msg, ObjectsReply | HintDelivery):
            carried.append([len(objects.encode(item.obj)) for item in msg.items])
        original(src, effect)  # type: ignore[arg-type]

    c._send = spy  # type: ignore[method-assign]
    c.run_until(lambda: all(stored(c.core("n1"), b"k%02d" % i) is not None for i in range(12)), 120_000)
    assert all(stored(c.core("n1"), b"k%02d" % i) == stored(core, b"k%02d" % i) for i in range(12))
    assert any(len(sizes) > 1 for sizes in carried), "some step carried several objects"
    assert all(sum(sizes[:-1]) < 500 * KIB for sizes in carried), carried


def test_the_hint_store_is_bounded_in_bytes_and_a_write_it_cannot_take_fails_rather_than_vanishing() -> None:
    """With 1 MiB of hints allowed, a fallback holds hints for a down primary only up to 1 MiB; the
    writes past it that needed the hint (w=all of three, one primary down) are not acknowledged."""
    c = SimCluster(4, BASE.replace(hints_bytes_max=1024 * KIB, hinted_handoff_enabled=True))
    c.crash("n3")
    c.settle(3000)
    answers = []
    for i in range(12):
        key = b"h%02d" % i
        answers.append(c.request("n0", ClientPut(b"b", key, None, Content(b"x" * (300 * KIB)), w="all")))
    held = {name: c.core(name)._hint_bytes for name in ("n0", "n1", "n2")}
    assert all(size <= 1024 * KIB for size in held.values()), held
    assert sum(size > 0 for size in held.values()) >= 1
    assert any(isinstance(a, Failure) for a in answers), "some writes needed a hint the full store refused"
    assert any(isinstance(a, Ok) for a in answers)
    for name in ("n0", "n1", "n2"):
        core = c.core(name)
        on_disk = sum(len(raw) for _, raw in core.engine.scan("hints", b"", None, 1000))
        assert on_disk == core._hint_bytes


def test_a_write_taking_a_keys_siblings_past_the_bound_is_refused_and_one_resolving_them_is_not() -> None:
    """Blind writes of 300 KiB with a 1 MiB bound on a key's siblings: three are taken, the fourth is
    refused as too large (an HTTP 413) and changes nothing; a write with the read's context, which
    replaces the siblings, is taken."""
    c = SimCluster(3, BASE.replace(key_siblings_bytes_max=1024 * KIB))
    for i in range(3):
        assert isinstance(c.request("n0", ClientPut(b"b", b"k", None, Content(bytes([i]) * (300 * KIB)))), Ok)
    refused = c.request("n1", ClientPut(b"b", b"k", None, Content(b"x" * (300 * KIB))))
    assert isinstance(refused, Failure) and refused.kind == "too_large", refused
    assert "key_siblings_bytes_max" in refused.reason
    read = c.request("n2", ClientGet(b"b", b"k", r=3))
    assert isinstance(read, Ok) and read.found is not None and len(read.found.values) == 3
    resolved = c.request("n2", ClientPut(b"b", b"k", read.found.context, Content(b"one")))
    assert isinstance(resolved, Ok)
    again = c.request("n0", ClientGet(b"b", b"k", r=3))
    assert isinstance(again, Ok) and again.found is not None
    assert [content.value for _, content in again.found.values] == [b"one"]


def test_concurrent_writers_on_both_sides_of_a_partition_merge_a_key_past_its_bound_losing_nothing() -> None:
    """Each side of a partition takes blind writes up to the bound; once healed the key holds both
    sides' siblings, past the bound: every acknowledged value is there, replicas converge, a further
    blind write is refused as too large, and a write with the read's context brings the key back under."""
    c = SimCluster(3, BASE.replace(key_siblings_bytes_max=1024 * KIB, read_repair_enabled=True))
    c.partition({"n0"}, {"n1", "n2"})
    c.settle(3000)
    written = []
    for side, node in enumerate(("n0", "n1")):
        for i in range(3):
            value = bytes([side * 10 + i]) * (300 * KIB)
            answer = c.request(node, ClientPut(b"b", b"k", None, Content(value), w=1, dw=1))
            assert isinstance(answer, Ok), answer
            written.append(value)
    c.heal()
    c.settle(5000)
    read = c.request("n2", ClientGet(b"b", b"k", r=3))
    assert isinstance(read, Ok) and read.found is not None
    assert sorted(content.value for _, content in read.found.values) == sorted(written)
    assert sum(content.size_bytes for _, content in read.found.values) > 1024 * KIB
    c.settle(5000)
    copies = {stored(c.core(name), b"k") for name in ("n0", "n1", "n2")}
    assert len(copies) == 1 and None not in copies, "every replica holds the merged key"
    refused = c.request("n0", ClientPut(b"b", b"k", None, Content(b"more")))
    assert isinstance(refused, Failure) and refused.kind == "too_large"
    resolved = c.request("n0", ClientPut(b"b", b"k", read.found.context, Content(b"merged")))
    assert isinstance(resolved, Ok)
    final = c.request("n1", ClientGet(b"b", b"k", r=3))
    assert isinstance(final, Ok) and final.found is not None
    assert [content.value for _, content in final.found.values] == [b"merged"]
