"""The get tally: when a read may be answered, what it answers (the merge of what replicas sent, worked
out once per reply however often it is asked for), and which replicas read repair must fix."""

from __future__ import annotations

import pytest

from dynastore.core import quorum
from dynastore.core.quorum import FAIL, OK, WAIT, GetTally
from dynastore.core.ring import Target
from dynastore.core.versions import Context, Dot, Versioned, merge, update

TARGETS = (Target("a", True), Target("b", True), Target("c", True))


def written(value: bytes, dot: Dot, base: Versioned[bytes] | None = None) -> Versioned[bytes]:
    ctx = base.context() if base is not None else Context()
    return update(base, ctx, dot, value, 1)


def test_r_replies_with_a_value_answer_and_not_found_waits_for_every_replica() -> None:
    tally = GetTally(TARGETS, r=2, pr=0)
    tally.add("a", None)
    tally.add("b", None)
    assert tally.decision() == WAIT
    tally.add("c", written(b"v", Dot(b"x#1", 1)))
    assert tally.decision() == OK and tally.merged() is not None

    failing = GetTally(TARGETS, r=2, pr=0)
    failing.add_error("a")
    failing.add_error("b")
    assert failing.decision() == FAIL


def test_the_merge_is_worked_out_once_per_reply_and_again_when_a_reply_arrives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []

    def counting(a: Versioned[bytes], b: Versioned[bytes]) -> Versioned[bytes]:
        calls.append((a, b))
        return merge(a, b)

    monkeypatch.setattr(quorum, "merge", counting)
    old = written(b"old", Dot(b"x#1", 1))
    new = written(b"new", Dot(b"x#1", 2), old)
    tally = GetTally(TARGETS, r=2, pr=0)
    tally.add("a", new)
    tally.add("b", old)
    first = tally.merged()
    assert first is not None and first.values() == [b"new"]
    assert tally.merged() is first and len(calls) == 1
    tally.add("c", None)
    assert tally.merged() == first and len(calls) == 2
    assert [t.node for t in tally.repairs()] == ["b", "c"] and len(calls) == 2


def test_replicas_that_sent_the_same_object_are_not_repaired_and_a_differing_one_is() -> None:
    state = written(b"v", Dot(b"x#1", 1))
    sibling = written(b"w", Dot(b"y#1", 1))
    tally = GetTally(TARGETS, r=2, pr=0)
    for node in ("a", "b"):
        tally.add(node, state)
    assert tally.merged() is state
    tally.add("c", sibling)
    merged = tally.merged()
    assert merged is not None and sorted(merged.values()) == [b"v", b"w"]
    assert [t.node for t in tally.repairs()] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("given", "bucket_rw", "expected"),
    [
        # Neither r nor w: the rw parameter for both halves, else the bucket's rw (also for rw=default).
        ({}, "all", ("all", "all")),
        ({}, 1, (1, 1)),
        ({"rw": 2}, "all", (2, 2)),
        ({"rw": "default"}, "one", ("one", "one")),
        # A given w is the write's, and leaves the read to the bucket's r (None), as riak_kv_delete does.
        ({"w": 3}, "one", (None, 3)),
        ({"w": 3, "rw": 1}, "all", (None, 3)),
        # A given r is the read's; the write still takes rw.
        ({"r": 3}, "one", (3, "one")),
        ({"r": 3, "rw": 2}, "all", (3, 2)),
        ({"r": "one", "w": "all", "rw": 2}, 1, ("one", "all")),
        ({"r": "default"}, 1, ("default", 1)),
    ],
)
def test_a_delete_takes_its_quorums_from_r_and_w_else_rw_else_the_bucket_rw(
    given: dict[str, int | str], bucket_rw: int | str, expected: tuple[int | str | None, int | str | None]
) -> None:
    """The r of a delete's read and the w of its write follow Riak's riak_kv_delete: r and w when
    given, otherwise the rw parameter, otherwise the bucket's rw."""
    r, w, rw = (given.get(name) for name in ("r", "w", "rw"))
    assert quorum.delete_quorums(r, w, rw, bucket_rw) == expected
