"""Security metadata: merges converge whatever order changes arrive in, scopes cover what they say,
passwords are stored as salted slow hashes and checked, and malformed records from a peer are refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynastore.core import security
from dynastore.core.security import SecurityError, SecurityState

USERS = ["alice", "bob"]
PERMS = ["riak_kv.get", "riak_kv.put", "dynastore.admin"]
SCOPES = ["any", "b1", "default/b2"]


@st.composite
def states(draw: st.DrawFn) -> SecurityState:
    """A state made by a random sequence of changes at random nodes."""
    state = security.EMPTY
    for _ in range(draw(st.integers(0, 8))):
        author = draw(st.sampled_from(["n0", "n1", "n2"]))
        kind = draw(st.integers(0, 3))
        user = draw(st.sampled_from(USERS))
        if kind == 0:
            state = state.with_enabled(draw(st.booleans()), author)
        elif kind == 1:
            state = state.with_user(user, draw(st.sampled_from([b"", b"scrypt:1:1:1:aa:bb"])), author)
        else:
            state = state.with_grant(
                user, draw(st.sampled_from(PERMS)), draw(st.sampled_from(SCOPES)), kind == 2, author
            )
    return state


@settings(max_examples=200, deadline=None)
@given(states(), states(), states())
def test_merge_is_commutative_associative_and_idempotent(a: SecurityState, b: SecurityState, c: SecurityState) -> None:
    """Concurrent changes made at different nodes converge to one state whatever the gossip order."""
    assert security.merge(a, b) == security.merge(b, a)
    assert security.merge(security.merge(a, b), c) == security.merge(a, security.merge(b, c))
    assert security.merge(a, a) == a


def test_two_grants_made_at_once_at_two_nodes_both_hold_and_a_later_deletion_wins() -> None:
    """A grant is its own record: granting get at n0 and put at n1 keeps both; deleting the user after
    seeing its creation removes it and its grants everywhere it meets the older records."""
    base = security.EMPTY.with_user("alice", b"scrypt:1:1:1:aa:bb", "n0")
    left = base.with_grant("alice", "riak_kv.get", "any", True, "n0")
    right = base.with_grant("alice", "riak_kv.put", "any", True, "n1")
    merged = security.merge(left, right)
    assert sorted(merged.grants_of("alice")) == [("riak_kv.get", "any"), ("riak_kv.put", "any")]
    deleted = merged.with_user("alice", b"", "n2")
    again = security.merge(deleted, left)
    assert again.user_hash("alice") is None and again.grants_of("alice") == []


@pytest.mark.parametrize(
    ("scope", "bucket_type", "bucket", "covered"),
    [
        ("any", None, None, True),
        ("any", "default", b"x", True),
        ("b1", "default", b"b1", True),
        ("b1", "default", b"b2", False),
        ("b1", "b1", b"whatever", True),
        ("maps", "maps", b"anything", True),
        ("maps", "sets", b"maps", False),
        ("default", "default", b"anything", True),
        ("default", "maps", b"anything", False),
        ("b1", None, None, False),
        ("default/b2", "default", b"b2", True),
        ("default/b2", "default", b"b1", False),
        ("maps/b2", "default", b"b2", False),
    ],
)
def test_a_scope_covers_any_request_a_bucket_type_or_one_bucket(
    scope: str, bucket_type: str | None, bucket: bytes | None, covered: bool
) -> None:
    """any; one word a bucket type (every bucket of it) or a bucket of the default type of that name;
    TYPE/BUCKET one bucket."""
    assert security.scope_covers(scope, bucket_type, bucket) is covered


def test_admin_implies_every_permission_and_revoked_grants_count_for_nothing() -> None:
    state = security.EMPTY.with_user("root", b"scrypt:1:1:1:aa:bb", "n0").with_grant(
        "root", "dynastore.admin", "any", True, "n0"
    )
    assert all(security.allowed(state, "root", perm, "default", b"b") for perm in security.PERMISSIONS)
    revoked = state.with_grant("root", "dynastore.admin", "any", False, "n0")
    assert not security.allowed(revoked, "root", "riak_kv.get", "default", b"b")


def test_a_password_is_stored_as_a_salted_scrypt_hash_and_only_the_right_one_verifies() -> None:
    salt = bytes(range(security.SALT_BYTES))
    stored = security.hash_password("correct horse", salt)
    assert b"correct horse" not in stored and stored.startswith(b"scrypt:")
    assert security.verify_password(stored, "correct horse")
    assert not security.verify_password(stored, "correct horsf")
    assert security.hash_password("correct horse", bytes(security.SALT_BYTES)) != stored, "salted"
    assert not security.verify_password(b"md5:whatever", "correct horse")


def test_malformed_security_records_from_a_peer_are_refused() -> None:
    good = security.to_wire(security.EMPTY.with_user("alice", b"scrypt:1:1:1:aa:bb", "n0"))
    assert security.from_wire(good).user_names() == ["alice"]
    for bad in (
        [None, [["alice", b"plaintext", 1, "n0"]], []],
        [None, [["al ice", b"", 1, "n0"]], []],
        [None, [], [["alice", "riak_kv.fly", "any", True, 1, "n0"]]],
        [None, [["alice", b"", 1, "n0"], ["alice", b"", 2, "n0"]], []],
        [[True, 0, "n0"], [], []],
        "nonsense",
    ):
        with pytest.raises(SecurityError):
            security.from_wire(bad)
