"""Staged membership changes, as Riak's `cluster plan / commit / clear`: what may be staged, what a
commit does, and the ring the changes lead to.

Theory of operation
-------------------
An operator stages changes (join, leave, remove, replace) at any member. They live in the cluster
state (membership.py) as one record per node a change concerns, versioned by (version, author) like
member records and merged the same way, so every node gossips, persists and shows the same staged
changes, and `plan`, `commit` and `clear` work from any node and survive restarts. A record is never
deleted: clearing or committing it writes it again with no action and a higher version, so an old
copy gossiped late cannot bring the change back.

- A node staged to join is a `joining` member whose record says `join`: the claimant leaves it out of
  the ring (`owning_weights`) until the change is committed.
- Commit turns every staged record into member records in one state update: leave makes the node
  `leaving`, remove makes it `removed`, a join just stops being staged, and a replace makes OLD
  `leaving` and stays in the state, marked committed, until the ring that carries it out is
  installed. The claimant sees all of them at once and makes one ring transition of them.
- For a committed replace the claimant's claim starts from the current ring with OLD's partitions
  given to NEW (`claim_base`): claim keeps every partition whose owner stays at its target, so NEW
  takes exactly OLD's partitions (at equal weights) and OLD hands them off before it exits.
- `future_owners` is the one function both the claimant and `plan` call: what plan shows is what
  commit does, as long as no other ring is installed in between (plan and commit refuse to run while
  a ring transition is in progress for that reason). Staged changes spread by gossip, so a node may
  not have heard of one staged elsewhere a moment ago: a plan carries an id (`plan_id`, a digest of
  the ring and the staged records), and a commit given that id refuses if the node's staged changes
  are no longer the ones planned, as Riak's commit refuses when the plan has changed.
- Clear drops every staged change; as in Riak, nodes staged to join are removed from the cluster
  (they own nothing and hold nothing, so they stop).

What is refused (and changes nothing), as Riak's claimant refuses it: a change for a node that is not a
member, a second change for a node that has one staged, a leave of a node already leaving, a remove of
the node asked (use leave), a set of changes that would leave no member to own the ring, a replace
whose NEW is not a node staged to join or is already another node's replacement, more owners than
the ring has partitions, and plan or commit
with nothing staged or while a ring transition is in progress. Fewer owners than n_val is allowed,
with a warning in the plan (Riak warns likewise).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, replace

from dynastore.core.membership import OWNING, STAGED_MAX, ClusterState, Staged
from dynastore.core.ring import ClaimError, Ring, claim


class PlanError(ValueError):
    """A staged change, plan or commit that is refused; the message says why, for the operator."""


# --- What the claimant uses ------------------------------------------------------------------------------


def pending(state: ClusterState) -> list[Staged]:
    """The staged changes not yet committed, by node."""
    return [r for r in state.staged if r.pending]


def staged_joiners(state: ClusterState) -> set[str]:
    return {r.node for r in state.staged if r.pending and r.action == "join"}


def owning_weights(state: ClusterState) -> dict[str, int]:
    """The members the claimant gives partitions to: joining and valid ones, except those staged to join."""
    held = staged_joiners(state)
    return {m.name: m.weight for m in state.members if m.status in OWNING and m.name not in held}


def committed_replacements(state: ClusterState) -> dict[str, str]:
    """OLD -> NEW for every committed replace whose ring is not installed yet."""
    return {r.node: r.target for r in state.staged if r.committed and r.action == "replace"}


def claim_base(state: ClusterState) -> Ring:
    """The ring the claimant's claim starts from: the current one, with each committed replace's OLD
    partitions already given to its NEW (when NEW is still to own partitions)."""
    owning = owning_weights(state)
    swaps = {old: new for old, new in committed_replacements(state).items() if new in owning}
    ring = state.ring.ring
    if not swaps:
        return ring
    return Ring(tuple(swaps.get(owner, owner) for owner in ring.owners))


def future_owners(state: ClusterState, n_val: int) -> tuple[str, ...]:
    """The owners the claimant will give the ring for this state's membership (claim in ring.py)."""
    ring = state.ring.ring
    return claim(owning_weights(state), ring.size, n_val, claim_base(state)).owners


# --- Staging, clearing, committing -----------------------------------------------------------------------


def stage_join(state: ClusterState, node: str, author: str) -> ClusterState:
    """`node`, just added as a joining member, waits for commit before it is given partitions."""
    after = state.with_staged(node, "join", author)
    _check_claimable(_apply(after, author))
    return after


def _check_claimable(after: ClusterState) -> None:
    if len(after.staged) > STAGED_MAX:
        # One record per node ever staged: a state with more could not be read back (membership.py).
        raise PlanError(f"more than {STAGED_MAX} nodes have had changes staged in this cluster")
    owning = owning_weights(after)
    if not owning:
        raise PlanError("these changes would leave no member to own the ring")
    if len(owning) > after.ring.ring.size:
        raise PlanError(f"{len(owning)} owners cannot share the ring's {after.ring.ring.size} partitions")


def stage(state: ClusterState, node: str, action: str, author: str, target: str = "") -> ClusterState:
    """Stage a leave or remove of `node`, or its replace by `target` (a node staged to join)."""
    member = state.member(node)
    if member is None or member.status == "removed":
        raise PlanError(f"{node} is not a member")
    current = state.staged_for(node)
    if current is not None and current.action != "":
        staged = "committed replace" if current.committed else f"staged {current.action}"
        raise PlanError(f"{node} already has a {staged}; cluster clear drops staged changes")
    if action == "leave":
        if member.status not in OWNING:
            raise PlanError(f"{node} is already leaving")
    elif action == "remove":
        if node == author:
            raise PlanError("a node cannot remove itself; use leave")
    elif action == "replace":
        if member.status not in OWNING:
            raise PlanError(f"{node} is already leaving")
        if target == node:
            raise PlanError("a node cannot replace itself")
        joiner = state.member(target)
        if target not in staged_joiners(state) or joiner is None or joiner.status != "joining":
            raise PlanError(f"{target} is not a node staged to join (cluster join SEED --stage at {target} first)")
        if any(r.action == "replace" and r.target == target for r in state.staged if r.node != node):
            raise PlanError(f"{target} is already the replacement of another node")
    else:
        raise PlanError(f"cannot stage {action!r}")
    after = state.with_staged(node, action, author, target)
    _check_claimable(_apply(after, author))
    return after


def clear(state: ClusterState, author: str) -> ClusterState:
    """Drop every staged change; nodes staged to join are removed, as in Riak."""
    records = pending(state)
    if not records:
        raise PlanError("there are no staged changes")
    for record in records:
        state = state.with_staged(record.node, "", author)
        member = state.member(record.node)
        if record.action == "join" and member is not None and member.status == "joining":
            state = state.with_member(replace(member, status="removed", version=member.version + 1))
    # An unstaged leave or remove since may have counted on a joiner this would remove.
    _check_claimable(state)
    return state


def commit(state: ClusterState, author: str, planned: str = "", n_val: int = 3) -> ClusterState:
    """Apply every staged change at once, for the claimant to make one ring transition of them.
    `planned`, when given, is the id of the plan the operator saw: commit refuses if it has changed."""
    _check_plannable(state)
    if planned and planned != plan_id(state):
        raise PlanError("the staged changes or the ring changed since that plan; run cluster plan again")
    after = _apply(state, author)
    # What plan refuses, commit refuses too (the state may have changed since the changes were staged).
    _check_claimable(after)
    try:
        future_owners(after, n_val)
    except ClaimError as exc:
        raise PlanError(f"these changes cannot make a ring: {exc}") from None
    return after


def plan_id(state: ClusterState) -> str:
    """Names what a plan was made of: the ring's (version, claimant), the staged records and the members."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{state.ring.version}:{state.ring.claimant}".encode())
    for r in pending(state):
        digest.update(f"|{r.node}:{r.action}:{r.target}:{r.version}:{r.author}".encode())
    # The members too: an unstaged leave or remove between plan and commit changes what commit does.
    for m in state.members:
        digest.update(f"#{m.name}:{m.status}:{m.weight}:{m.version}".encode())
    return digest.hexdigest()


def _check_plannable(state: ClusterState) -> None:
    if not pending(state):
        raise PlanError("there are no staged changes")
    if state.ring.next_owners is not None:
        raise PlanError(
            f"a ring transition is in progress (ring v{state.ring.version}); plan and commit once it "
            "has finished (cluster status shows it)"
        )


def _apply(state: ClusterState, author: str) -> ClusterState:
    for record in pending(state):
        member = state.member(record.node)
        assert member is not None
        committed = False
        if record.action in ("leave", "replace") and member.status in OWNING:
            state = state.with_member(replace(member, status="leaving", version=member.version + 1))
            committed = record.action == "replace"
        elif record.action == "remove" and member.status != "removed":
            state = state.with_member(replace(member, status="removed", version=member.version + 1))
        if committed:
            state = state.with_staged(record.node, "replace", author, record.target, committed=True)
        else:
            state = state.with_staged(record.node, "", author)
    return state


def settle_replacements(state: ClusterState, author: str) -> ClusterState:
    """After a ring is installed: committed replaces whose OLD owns nothing any more are done."""
    owners = set(state.ring.owners) | set(state.ring.next_owners or ())
    for old in committed_replacements(state):
        if old not in owners:
            state = state.with_staged(old, "", author)
    return state


# --- Plan ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodePlan:
    """One node's partitions now and after the staged changes (Riak's plan: ring share now and pending)."""

    name: str
    status_after: str
    partitions_now: int
    partitions_after: int
    gains: int
    losses: int


@dataclass(frozen=True, slots=True)
class Plan:
    plan_id: str
    ring_version: int
    changes: tuple[Staged, ...]
    nodes: tuple[NodePlan, ...]
    owners_now: tuple[str, ...]
    owners_after: tuple[str, ...]
    # (from, to, partitions): how many partitions move between each pair of nodes.
    moves: tuple[tuple[str, str, int], ...]
    warnings: tuple[str, ...]

    @property
    def partitions_moved(self) -> int:
        return sum(count for _, _, count in self.moves)


def plan(state: ClusterState, n_val: int) -> Plan:
    """What committing the staged changes will do to the ring (refused as commit would be)."""
    _check_plannable(state)
    changes = tuple(pending(state))
    after = _apply(state, "")
    owners_now = state.ring.owners
    try:
        owners_after = future_owners(after, n_val)
    except ClaimError as exc:
        raise PlanError(f"these changes cannot make a ring: {exc}") from None
    now, later = Counter(owners_now), Counter(owners_after)
    moves = Counter((a, b) for a, b in zip(owners_now, owners_after, strict=True) if a != b)
    gains = Counter(b for (_, b), count in moves.items() for _ in range(count))
    losses = Counter(a for (a, _), count in moves.items() for _ in range(count))
    nodes = []
    for m in after.members:
        if m.status == "removed" and not now[m.name]:
            continue
        status = m.status
        if m.status == "joining" and later[m.name]:
            status = "valid"
        elif m.status == "leaving" and not later[m.name]:
            status = "exiting"
        nodes.append(NodePlan(m.name, status, now[m.name], later[m.name], gains[m.name], losses[m.name]))
    warnings = []
    owning = len(owning_weights(after))
    if owning < n_val:
        warnings.append(f"not all replicas will be on distinct nodes: {owning} owners for n_val {n_val}")
    return Plan(
        plan_id(state),
        state.ring.version,
        changes,
        tuple(nodes),
        owners_now,
        owners_after,
        tuple((a, b, count) for (a, b), count in sorted(moves.items())),
        tuple(warnings),
    )
