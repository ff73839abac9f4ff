"""What changed between two cluster states, as events for the operator's log.

Every node sees every cluster change (it sets it, or gossip brings it), so every node logs the
change once, when its own state takes it: a member joining, leaving or removed, a ring transition
starting and ending, changes staged (and no longer staged), security switched on or off, users and
grants, bucket types. Transfers of
single partitions are reported where they happen (handoff.py), not here. Pure: no I/O.
"""

from __future__ import annotations

from dynastore.core.effects import Event
from dynastore.core.membership import ClusterState, RingState


def between(old: ClusterState, new: ClusterState) -> list[Event]:
    """The events that tell an operator how `new` differs from `old` (nothing for equal states)."""
    events: list[Event] = []
    _members(old, new, events)
    _ring(old.ring, new.ring, events)
    _staged(old, new, events)
    _security(old, new, events)
    _types(old, new, events)
    return events


def _staged(old: ClusterState, new: ClusterState, out: list[Event]) -> None:
    if old.staged == new.staged:
        return
    before = {r.node: r for r in old.staged}
    for r in new.staged:
        was = before.get(r.node)
        if r.pending and (was is None or (was.action, was.target, was.pending) != (r.action, r.target, True)):
            what = f"{r.action} of {r.node}" + (f" by {r.target}" if r.target else "")
            text = f"staged: {what} (cluster plan shows it; cluster commit applies it)"
            fields = (("node", r.node), ("action", r.action), ("target", r.target))
            out.append(Event("change_staged", "info", text, fields))
        elif not r.pending and was is not None and was.pending:
            # Committed or cleared: the node that did it logs which (changes_committed / _cleared).
            text = f"{was.action} of {r.node} is no longer staged"
            out.append(Event("change_unstaged", "info", text, (("node", r.node), ("action", was.action))))


def _members(old: ClusterState, new: ClusterState, out: list[Event]) -> None:
    before = {m.name: m for m in old.members}
    for m in new.members:
        was = before.get(m.name)
        if was is None:
            out.append(
                Event(
                    "member_added",
                    "info",
                    f"member {m.name} ({m.host}:{m.peer_port}) added as {m.status}",
                    (("member", m.name), ("status", m.status), ("host", m.host), ("peer_port", m.peer_port)),
                )
            )
        elif was.status != m.status:
            out.append(
                Event(
                    "member_status",
                    "warning" if m.status == "removed" else "info",
                    f"member {m.name} is now {m.status} (was {was.status})",
                    (("member", m.name), ("status", m.status), ("was", was.status)),
                )
            )
        elif (was.address, was.http_port, was.tls) != (m.address, m.http_port, m.tls):
            out.append(
                Event(
                    "member_moved",
                    "info",
                    f"member {m.name} now at {m.host}:{m.peer_port} (HTTP {m.http_port}{', TLS' if m.tls else ''})",
                    (("member", m.name), ("host", m.host), ("peer_port", m.peer_port), ("http_port", m.http_port)),
                )
            )


def _moved(owners: tuple[str, ...], next_owners: tuple[str, ...]) -> int:
    return sum(1 for a, b in zip(owners, next_owners, strict=False) if a != b)


def _ring(old: RingState, new: RingState, out: list[Event]) -> None:
    if old.key() == new.key() and old.next_owners == new.next_owners and old.owners == new.owners:
        return
    if new.next_owners is not None and new.next_owners != old.next_owners:
        moving = _moved(new.owners, new.next_owners)
        out.append(
            Event(
                "ring_transition_started",
                "info",
                f"ring version {new.version} by {new.claimant}: {moving} of {len(new.owners)} partitions change owner",
                (("version", new.version), ("claimant", new.claimant), ("partitions_moving", moving)),
            )
        )
    elif new.next_owners is None and old.next_owners is not None:
        moved = _moved(old.owners, new.owners)
        out.append(
            Event(
                "ring_transition_finished",
                "info",
                f"ring version {new.version}: transition finished, {moved} partitions changed owner",
                (("version", new.version), ("claimant", new.claimant), ("partitions_moved", moved)),
            )
        )
    elif new.owners != old.owners or new.key() != old.key():
        moved = _moved(old.owners, new.owners) if len(old.owners) == len(new.owners) else len(new.owners)
        out.append(
            Event(
                "ring_changed",
                "info",
                f"ring is now version {new.version} by {new.claimant}: {moved} of {len(new.owners)} partitions moved",
                (("version", new.version), ("claimant", new.claimant), ("partitions_moved", moved)),
            )
        )


def _security(old: ClusterState, new: ClusterState, out: list[Event]) -> None:
    a, b = old.security, new.security
    if a == b:
        return
    if a.on != b.on:
        state = "enabled" if b.on else "disabled"
        out.append(Event("security_changed", "warning", f"security {state}", (("enabled", b.on),)))
    users_a = {user: digest for user, digest, _ in a.users}
    for user, digest, _ in b.users:
        was = users_a.get(user)
        if digest and not was:
            out.append(Event("user_added", "info", f"user {user} added", (("user", user),)))
        elif not digest and was:
            out.append(Event("user_deleted", "info", f"user {user} deleted", (("user", user),)))
        elif digest and was != digest:
            out.append(Event("user_password_changed", "info", f"password of user {user} changed", (("user", user),)))
    grants_a = {(user, perm, scope): present for user, perm, scope, present, _ in a.grants}
    for user, perm, scope, present, _ in b.grants:
        if grants_a.get((user, perm, scope), False) == present:
            continue
        where = scope or "any"
        if present:
            text, kind = f"granted {perm} on {where} to {user}", "grant_added"
        else:
            text, kind = f"revoked {perm} on {where} from {user}", "grant_revoked"
        out.append(Event(kind, "info", text, (("user", user), ("permission", perm), ("scope", where))))


def _types(old: ClusterState, new: ClusterState, out: list[Event]) -> None:
    if old.types == new.types:
        return
    before = dict(old.types)
    for name, record in new.types:
        was = before.get(name)
        if was is None:
            what = "created and active" if record.active else "created"
        elif record.active and not was.active:
            what = "activated"
        elif record.props != was.props:
            what = "updated"
        else:
            continue
        out.append(
            Event("bucket_type_changed", "info", f"bucket type {name} {what}", (("type", name), ("change", what)))
        )
