"""Cluster operations: heartbeats and gossip, join, leave and remove, the claimant's ring transitions,
and bucket properties, all of which change the cluster state every node holds.

Theory of operation
-------------------
Every heartbeat interval a node pings each active member (the failure detector hears the pongs);
every gossip interval it sends one peer, chosen at random and mostly among those believed up, the
digest of its cluster state; a peer whose digest differs answers with its whole state, and both
merge (membership.py holds the merge rule, which converges whatever order updates arrive in).
Changes that matter at once (a leave, a remove, a new ring, bucket properties) are also pushed to
every active member.

Operators change member records only: a join asks a seed to add this empty node as `joining`; a leave
marks this node `leaving`; a remove marks another node `removed`. Each may instead be staged, as may a
replace, for a later commit that applies them all at once (clusterplan.py holds those rules). The
claimant (membership.py) turns those records into a ring transition, ends it once every partition
has switched (placement.py), and then promotes joiners to `valid` and leavers to `exiting`. A node
that is exiting or removed, owns nothing and holds nothing asks its shell to stop.

Every change goes through `_set_cluster`, which persists the state in the same batch as the effects
that announce it. Only the claimant plans rings; other nodes only record in the ring the transfers
they have finished (handoff.py).
"""

from __future__ import annotations

from dataclasses import replace

from dynastore.core import bucketprops, buckettypes, clusterplan, crdt, membership, placement, secret, security
from dynastore.core.bucketprops import BUCKET_PROPS
from dynastore.core.effects import (
    ClientJoin,
    ClientLeave,
    ClientRemove,
    ClientReplace,
    ClientStaged,
    SecurityChange,
    Send,
    Stop,
    seed_label,
)
from dynastore.core.membership import ACTIVE, OWNING, ClusterState, Member, RingState
from dynastore.core.messages import (
    ClientBucketType,
    ClientSetBucketProps,
    Failure,
    GossipDigest,
    GossipState,
    JoinReply,
    JoinRequest,
    NotFound,
    Ok,
    Ping,
    Pong,
)
from dynastore.core.nodebase import META_CLUSTER, META_CLUSTER_KEY, NodeBase, StartupError
from dynastore.core.ops import JoinOp, Origin


class ClusterOps(NodeBase):
    """Membership, gossip, ring transitions and bucket properties; mixed into NodeCore."""

    _ping_seq: int
    # The random key stored with the cluster (used when no secret is configured).
    _cluster_key: bytes
    _keys: secret.ClusterKeys
    _next_gossip_ms: int
    _next_heartbeat_ms: int
    # Set once a leaving node has handed everything off and asked its shell to stop (a `Stop` effect).
    exit_requested: bool

    def _init_cluster(self, me: Member, now_ms: int) -> None:
        """The cluster state from disk (or a new one-node cluster), its key, and the membership timers."""
        raw_state = self._get("meta", META_CLUSTER)
        stored = self._get("meta", META_CLUSTER_KEY)
        if raw_state is None:
            s = self.settings
            state = membership.new_cluster(s.cluster_name, me, s.ring_size, s.n_val, s.security_enabled)
            self._put("meta", META_CLUSTER, membership.encode(state))
            stored = None
        else:
            state = membership.decode(raw_state)
            mine = state.member(me.name)
            where = (me.host, me.peer_port, me.http_port, me.tls)
            if mine is not None and (mine.host, mine.peer_port, mine.http_port, mine.tls) != where:
                # Restarted at another address (or with TLS switched): publish it with a higher version.
                moved = replace(mine, host=me.host, peer_port=me.peer_port, http_port=me.http_port, tls=me.tls)
                state = state.with_member(replace(moved, version=mine.version + 1))
                self._put("meta", META_CLUSTER, membership.encode(state))
        if raw_state is not None and membership.encode(state) != raw_state:
            # Written by an earlier release (an older format): migrated, in the first batch.
            self._put("meta", META_CLUSTER, membership.encode(state))
        self.cluster = state
        if stored is None:
            if len(state.members) > 1 and secret.configured(self.settings) is None:
                raise StartupError(
                    "this data directory belongs to a cluster of several nodes made before cluster keys: "
                    "set cluster_secret (at least 16 characters, the same on every node)"
                )
            # Created with the cluster: the key of a cluster without a configured secret.
            stored = self.rng.randbytes(secret.CLUSTER_KEY_BYTES)
            self._put("meta", META_CLUSTER_KEY, stored)
        self._cluster_key = stored
        self._keys = secret.cluster_keys(self.settings, stored)
        self._next_gossip_ms = now_ms + self.rng.randrange(max(1, self.settings.gossip_interval_ms))
        self._next_heartbeat_ms = now_ms
        self._ping_seq = 0
        self.exit_requested = False

    def cluster_keys(self) -> secret.ClusterKeys:
        """The cluster's key material: the configured secret's, else the key stored with the cluster."""
        return self._keys

    def _store_cluster_key(self, key: bytes) -> None:
        self._cluster_key = key
        self._keys = secret.cluster_keys(self.settings, key)
        self._put("meta", META_CLUSTER_KEY, key)

    def _tick_membership(self, now_ms: int) -> None:
        detector = self.detector
        for peer in detector.update([n for n in self.cluster.names(ACTIVE) if n != self.name], now_ms):
            phi = round(detector.phi(peer, now_ms), 2)
            why = "its connection failed" if peer in detector.unreachable else f"phi {phi} >= {detector.threshold}"
            self._event(
                "peer_down",
                "warning",
                f"{peer} is judged down ({why})",
                peer=peer,
                phi=phi,
                unreachable=peer in detector.unreachable,
            )
        if now_ms >= self._next_heartbeat_ms:
            self._next_heartbeat_ms = now_ms + self.settings.heartbeat_interval_ms
            self._heartbeat()
        if now_ms >= self._next_gossip_ms:
            self._next_gossip_ms = now_ms + self.settings.gossip_interval_ms
            self._gossip(now_ms)
            self._claim(now_ms)

    # --- Heartbeats and gossip ---------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        self._ping_seq += 1
        for node in self.cluster.names(ACTIVE):
            if node != self.name:
                self._send(node, Ping(self._ping_seq))

    def _on_ping(self, src: str, msg: Ping, now_ms: int) -> None:
        self._send(src, Pong(msg.seq))

    def _on_pong(self, src: str, msg: Pong, now_ms: int) -> None:
        return

    def _gossip(self, now_ms: int) -> None:
        peers = [n for n in self.cluster.names(ACTIVE) if n != self.name]
        if not peers:
            return
        self.stats.gossip_rounds += 1
        up = [n for n in peers if self.detector.is_up(n, now_ms)]
        # Mostly gossip with peers believed up; now and then try any peer, so that a peer wrongly
        # believed down (or just restarted) hears from us.
        pool = up if up and self.rng.random() < 0.8 else peers
        self._send(self.rng.choice(sorted(pool)), GossipDigest(self.cluster.digest()))

    def _on_gossip_digest(self, src: str, msg: GossipDigest, now_ms: int) -> None:
        if msg.digest != self.cluster.digest():
            self._send(src, GossipState(membership.encode(self.cluster), True))

    def _on_gossip_state(self, src: str, msg: GossipState, now_ms: int) -> None:
        try:
            theirs = membership.decode(msg.state)
            merged = membership.merge(self.cluster, theirs)
        except membership.StateError as exc:
            self.stats.peer_errors += 1
            del exc
            return
        self._set_cluster(merged)
        if msg.reply and merged.digest() != theirs.digest():
            self._send(src, GossipState(membership.encode(merged), False))

    def _push_state(self) -> None:
        """Send the whole cluster state to every active member at once (used after important changes)."""
        encoded = membership.encode(self.cluster)
        for node in self.cluster.names(ACTIVE):
            if node != self.name:
                self._send(node, GossipState(encoded, False))

    # --- Ring transitions ---------------------------------------------------------------------------------

    def _claim(self, now_ms: int) -> None:
        """The claimant turns membership changes into ring transitions, and ends them when done.

        One transition at a time: changes that arrive meanwhile wait for the next one, unless the
        transition would hand partitions to a node that is no longer wanted, which restarts it. Nodes
        staged to join get nothing until the staged changes are committed (clusterplan.py).
        """
        state = self.cluster
        if state.claimant() != self.name:
            return
        owning = clusterplan.owning_weights(state)
        if not owning:
            return
        ring = state.ring
        if ring.next_owners is not None:
            if set(ring.next_owners) <= set(owning):
                if placement.all_switched(ring, self.n_vals()):
                    self._install_ring(state, ring.next_owners)
                return
            # A node of the next ring left or was removed meanwhile: plan again from the current ring.
        elif set(ring.owners) == set(owning) and not any(
            m.status == "joining" and m.name in owning for m in state.members
        ):
            return
        # The same function `cluster plan` shows the result of.
        owners = clusterplan.future_owners(state, self.settings.n_val)
        if owners == ring.owners:
            self._install_ring(state, owners)
            return
        transition = RingState(ring.version + 1, self.name, ring.owners, owners, frozenset())
        self._set_cluster(replace(state, ring=transition))
        self._push_state()

    def _install_ring(self, state: ClusterState, owners: tuple[str, ...]) -> None:
        """Make `owners` the current ring, ending any transition; then promote members and announce it."""
        self._set_cluster(replace(state, ring=RingState(state.ring.version + 1, self.name, owners)))
        self._promote_members()
        self._push_state()

    def _promote_members(self) -> None:
        """After a ring change: joiners that own partitions are valid, leavers that own none exit."""
        state = self.cluster
        owners = set(state.ring.owners)
        for m in state.members:
            if m.status == "joining" and m.name in owners:
                state = state.with_member(replace(m, status="valid", version=m.version + 1))
            elif m.status == "leaving" and m.name not in owners:
                state = state.with_member(replace(m, status="exiting", version=m.version + 1))
        self._set_cluster(clusterplan.settle_replacements(state, self.name))

    # --- Join, leave and remove ---------------------------------------------------------------------------

    def _start_join(self, origin: Origin, req: ClientJoin, now_ms: int) -> None:
        if len(self.cluster.names(ACTIVE)) > 1:
            # Joining the cluster this node already belongs to succeeds and changes nothing.
            if any(m.address == (req.seed_host, req.seed_port) for m in self.cluster.members):
                self._answer(origin, Ok())
            else:
                self._answer(origin, Failure("bad_request", "this node already belongs to another cluster"))
            return
        if self.has_data():
            self._answer(origin, Failure("bad_request", "this node holds data; only an empty node can join"))
            return
        me = self.cluster.member(self.name)
        assert me is not None
        op = JoinOp(origin, self._timeout(None, now_ms), seed_label(req.seed_host, req.seed_port))
        op_id = self._register(op)
        request = JoinRequest(op_id, membership.encode_member(me), req.stage)
        self._queue(Send("", request, address=(req.seed_host, req.seed_port)), None)

    def _expire_join(self, op_id: int, op: JoinOp, now_ms: int) -> None:
        self._finish(op_id)
        self._answer(op.origin, Failure("timeout", "timed out waiting for the seed to answer"))

    def _lost_join(self, op_id: int, op: JoinOp, peer: str, reason: str, now_ms: int) -> None:
        if op.seed == peer:
            self._finish(op_id)
            if reason:
                self._answer(op.origin, Failure("bad_request", f"seed {peer[1:]} refused this node: {reason}"))
            else:
                self._answer(op.origin, Failure("unavailable", f"seed {peer[1:]} is unreachable"))

    def _on_join_request(self, src: str, msg: JoinRequest, now_ms: int) -> None:
        try:
            joiner = membership.decode_member(msg.member)
        except membership.StateError as exc:
            self._send(src, JoinReply(msg.req, False, f"malformed join request: {exc}", b"", b""))
            return
        if joiner.name != src:
            self._send(src, JoinReply(msg.req, False, "a node can only ask to join for itself", b"", b""))
            return
        if self.cluster.security.on and not joiner.tls and not secret.is_loopback(joiner.host):
            reason = f"security is on: a member on {joiner.host} must serve TLS"
            self._send(src, JoinReply(msg.req, False, reason, b"", b""))
            return
        existing = self.cluster.member(joiner.name)
        if existing is None or existing.status not in ACTIVE:
            version = 1 if existing is None else existing.version + 1
            joined = self.cluster.with_member(replace(joiner, status="joining", version=version))
            # A staged joiner is a member from now on, but is given partitions only at commit; the
            # record goes in the same state as the member, so no claimant ever sees one without the other.
            if msg.stage:
                try:
                    joined = clusterplan.stage_join(joined, joiner.name, self.name)
                except clusterplan.PlanError as exc:
                    self._send(src, JoinReply(msg.req, False, str(exc), b"", b""))
                    return
            elif (record := joined.staged_for(joiner.name)) is not None and record.pending:
                joined = joined.with_staged(joiner.name, "", self.name)
            self._set_cluster(joined)
        elif (existing.address, existing.http_port, existing.tls) != (joiner.address, joiner.http_port, joiner.tls):
            moved = replace(
                existing, host=joiner.host, peer_port=joiner.peer_port, http_port=joiner.http_port, tls=joiner.tls
            )
            self._set_cluster(self.cluster.with_member(replace(moved, version=existing.version + 1)))
        # A cluster without a configured secret hands its key to the node that joins it.
        key = b"" if self.cluster_keys().configured else self._cluster_key
        self._send(src, JoinReply(msg.req, True, "", membership.encode(self.cluster), key))
        # Members drop what strangers send: tell them all of the new member at once.
        self._push_state()

    def _on_join_reply(self, src: str, msg: JoinReply, now_ms: int) -> None:
        op = self._ops.get(msg.req)
        if not isinstance(op, JoinOp):
            return
        self._finish(msg.req)
        if not msg.ok:
            self._answer(op.origin, Failure("bad_request", f"join refused: {msg.reason}"))
            return
        try:
            theirs = membership.decode(msg.state)
        except membership.StateError as exc:
            self._answer(op.origin, Failure("unavailable", f"seed sent a malformed state: {exc}"))
            return
        if theirs.cluster != self.cluster.cluster:
            self._answer(op.origin, Failure("bad_request", f"seed belongs to cluster {theirs.cluster!r}"))
            return
        if not theirs.is_member(src) or theirs.member(self.name) is None:
            self._answer(op.origin, Failure("unavailable", "the seed's answer lists neither itself nor this node"))
            return
        # The node's one-node cluster is abandoned: it adopts the cluster it joined, and its key.
        self._set_cluster(theirs)
        if msg.key and not self.cluster_keys().configured:
            self._store_cluster_key(msg.key)
        self._answer(op.origin, Ok())

    def _leave(self, origin: Origin, req: ClientLeave, now_ms: int) -> None:
        me = self.cluster.member(self.name)
        assert me is not None
        if req.stage:
            self._stage(origin, self.name, "leave")
            return
        # Members staged to join own nothing until a commit: they do not count as others.
        others = [n for n in clusterplan.owning_weights(self.cluster) if n != self.name]
        if me.status in ("leaving", "exiting"):
            self._answer(origin, Ok())
            return
        if me.status not in OWNING:
            self._answer(origin, Failure("bad_request", "this node is not a member"))
            return
        if not others:
            self._answer(origin, Failure("bad_request", "the last member of a cluster cannot leave it"))
            return
        self._set_cluster(self.cluster.with_member(replace(me, status="leaving", version=me.version + 1)))
        self._push_state()
        self._answer(origin, Ok())

    def _remove(self, origin: Origin, req: ClientRemove, now_ms: int) -> None:
        if req.stage:
            self._stage(origin, req.node, "remove")
            return
        member = self.cluster.member(req.node)
        if member is None:
            self._answer(origin, Failure("bad_request", f"{req.node} is not a member"))
            return
        if req.node == self.name:
            self._answer(origin, Failure("bad_request", "a node cannot remove itself; use leave"))
            return
        if member.status == "removed":
            self._answer(origin, Ok())
            return
        if not [n for n in clusterplan.owning_weights(self.cluster) if n != req.node]:
            self._answer(origin, Failure("bad_request", "removing it would leave no member"))
            return
        self._set_cluster(self.cluster.with_member(replace(member, status="removed", version=member.version + 1)))
        self.detector.forget(req.node)
        self._push_state()
        self._answer(origin, Ok())

    # --- Staged changes (clusterplan.py) ------------------------------------------------------------------

    def _stage(self, origin: Origin, node: str, action: str, target: str = "") -> None:
        try:
            staged = clusterplan.stage(self.cluster, node, action, self.name, target)
        except clusterplan.PlanError as exc:
            self._answer(origin, Failure("bad_request", str(exc)))
            return
        self._set_cluster(staged)
        self._push_state()
        self._answer(origin, Ok())

    def _replace(self, origin: Origin, req: ClientReplace, now_ms: int) -> None:
        self._stage(origin, req.old, "replace", req.new)

    def _staged(self, origin: Origin, req: ClientStaged, now_ms: int) -> None:
        """Commit or clear the staged changes, from whichever node is asked: the result is gossiped
        (and pushed at once), and the claimant makes one ring transition of a commit."""
        claimant = self.cluster.claimant()
        if claimant is not None and claimant != self.name:
            # One node decides, so that a commit and a clear asked of two nodes at once cannot merge
            # into a mix of both that neither operator planned (Riak's claimant commits too).
            member = self.cluster.member(claimant)
            where = "" if member is None else f" (HTTP {member.host}:{member.http_port})"
            text = f"only the claimant commits or clears staged changes: ask {claimant}{where}"
            self._answer(origin, Failure("bad_request", text))
            return
        joiners = clusterplan.staged_joiners(self.cluster)
        what = ", ".join(f"{r.action} of {r.node}" for r in clusterplan.pending(self.cluster))
        try:
            if req.action == "commit":
                changed = clusterplan.commit(self.cluster, self.name, req.plan_id, self.settings.n_val)
            else:
                changed = clusterplan.clear(self.cluster, self.name)
        except clusterplan.PlanError as exc:
            self._answer(origin, Failure("bad_request", str(exc)))
            return
        done = "committed" if req.action == "commit" else "cleared"
        self._event(f"changes_{done}", "info", f"staged changes {done}: {what}", changes=what)
        self._set_cluster(changed)
        self._push_state()
        # Joiners a clear removed are no longer active members: tell them directly, so they stop.
        encoded = membership.encode(self.cluster)
        for node in sorted(joiners - set(self.cluster.names(ACTIVE))):
            self._send(node, GossipState(encoded, False))
        self._answer(origin, Ok())

    def cluster_plan(self) -> clusterplan.Plan:
        """What committing the staged changes will do (raises clusterplan.PlanError when it cannot)."""
        return clusterplan.plan(self.cluster, self.settings.n_val)

    def _maybe_exit(self, now_ms: int) -> None:
        """A node that left and handed everything off marks itself removed and asks to stop."""
        me = self.cluster.member(self.name)
        if me is None or me.status not in ("exiting", "removed") or self.exit_requested:
            return
        if self.name in self.cluster.ring.owners or self._hint_count or self.has_data():
            return
        if me.status == "exiting":
            self._set_cluster(self.cluster.with_member(replace(me, status="removed", version=me.version + 1)))
            self._push_state()
        self.exit_requested = True
        self._queue(Stop(f"{self.name} has handed off everything it held and left the cluster"), None)

    # --- Security metadata ---------------------------------------------------------------------------

    def _change_security(self, origin: Origin, req: SecurityChange, now_ms: int) -> None:
        """Apply an operator's change to users, grants or the security switch, cluster-wide."""
        try:
            changed = self._security_after(req)
        except security.SecurityError as exc:
            self._answer(origin, Failure("bad_request", str(exc)))
            return
        self._set_cluster(self.cluster.with_security(changed))
        # Push at once, so that a change made here holds everywhere within a round trip.
        self._push_state()
        self._answer(origin, Ok())

    def _security_after(self, req: SecurityChange) -> security.SecurityState:
        state, me = self.cluster.security, self.name
        if req.action in ("enable", "disable"):
            if req.action == "enable":
                members = [(m.host, m.tls) for m in self.cluster.members if m.status in ACTIVE]
                problem = security.members_may_enable(members, secret.is_loopback)
                if problem is not None:
                    raise security.SecurityError(problem)
            return state.with_enabled(req.action == "enable", me)
        problem = security.check_user_name(req.user)
        if problem is not None:
            raise security.SecurityError(problem)
        if req.action == "add_user":
            if not req.password_hash or not security.check_stored_hash(req.password_hash):
                raise security.SecurityError("malformed password hash")
            return state.with_user(req.user, req.password_hash, me)
        if state.user_hash(req.user) is None:
            raise security.SecurityError(f"no user {req.user!r}")
        if req.action == "del_user":
            return state.with_user(req.user, b"", me)
        for perm in req.permissions:
            problem = security.check_grant(perm, req.scope)
            if problem is not None:
                raise security.SecurityError(problem)
        for perm in req.permissions:
            state = state.with_grant(req.user, perm, req.scope, req.action == "grant", me)
        return state

    # --- Bucket properties ---------------------------------------------------------------------------

    def _set_bucket_props(self, origin: Origin, req: ClientSetBucketProps, now_ms: int) -> None:
        bad = self._check_key(req.bucket, None)
        if bad is not None:
            self._answer(origin, bad)
            return
        current = self._props(req.bucket)
        changes = dict(req.props)
        # A typed bucket's datatype is its type's: sent back as read it is no change, else refused.
        problem = buckettypes.bucket_change_problem(changes, current)
        if problem is not None:
            self._answer(origin, Failure("bad_request", problem))
            return
        changes = {k: v for k, v in changes.items() if k not in buckettypes.TYPE_ONLY_PROPS}
        unknown = sorted(set(changes) - set(BUCKET_PROPS))
        if unknown:
            self._answer(origin, Failure("bad_request", f"unknown bucket properties: {', '.join(unknown)}"))
            return
        merged = {**current, **changes}
        problem = bucketprops.problem(merged, self.settings)
        if problem is None and current.get("datatype") is not None and bucketprops.keeps_one(merged):
            problem = "a bucket of data types needs allow_mult=true and last_write_wins=false"
        if problem is not None:
            self._answer(origin, Failure("bad_request", problem))
            return
        if req.reset:
            # Back to what its type (or the node's defaults) says: the bucket sets nothing of its own.
            self._set_cluster(self.cluster.with_bucket(req.bucket, {}, self.name))
            self._push_state()
            self._answer(origin, Ok())
            return
        # What was set stays as it was set (a "default" keeps following the node's default).
        stored = {**self.cluster.bucket(req.bucket), **changes}
        self._set_cluster(self.cluster.with_bucket(req.bucket, stored, self.name))
        # Push at once to every member so that the change is visible cluster-wide within a round trip.
        self._push_state()
        self._answer(origin, Ok())

    # --- Bucket types ----------------------------------------------------------------------------------

    def _bucket_type(self, origin: Origin, req: ClientBucketType, now_ms: int) -> None:
        """Create, activate or update a bucket type (buckettypes.py). An unknown type is a not-found
        (it is never created by an update), a bad change a bad request."""
        problem = buckettypes.name_problem(req.name)
        if problem is not None:
            self._answer(origin, Failure("bad_request", problem))
            return
        record = self.cluster.bucket_type(req.name)
        if req.action == "create":
            if req.name == buckettypes.DEFAULT or record is not None:
                self._answer(origin, Failure("bad_request", f"bucket type {req.name} already exists"))
                return
            if len(self.cluster.types) >= self.settings.bucket_types_max:
                limit = self.settings.bucket_types_max
                self._answer(origin, Failure("bad_request", f"the cluster holds its limit of {limit} bucket types"))
                return
        elif record is None and req.name != buckettypes.DEFAULT:
            self._answer(origin, NotFound(None))
            return
        current = {} if record is None else record.as_dict()
        # The default type is always active; another is active once activated.
        active = req.name == buckettypes.DEFAULT or (record is not None and record.active)
        if req.action == "activate":
            if record is not None and record.active:
                self._answer(origin, Ok())
                return
            props = current
            active = True
        else:
            changes = dict(req.props)
            if req.name == buckettypes.DEFAULT and changes.get("datatype") is not None:
                self._answer(origin, Failure("bad_request", "the default bucket type holds no datatype"))
                return
            base = {**bucketprops.defaults(self.settings), **current}
            merged = {**base, **{k: v for k, v in changes.items() if v is not None}}
            problem = buckettypes.change_problem(None if record is None else current, active, changes, merged)
            if problem is None and any(k not in buckettypes.TYPE_ONLY_PROPS for k in changes):
                problem = bucketprops.problem(
                    {k: v for k, v in merged.items() if k in bucketprops.BUCKET_PROPS}, self.settings
                )
            if problem is not None:
                self._answer(origin, Failure("bad_request", problem))
                return
            props = {**current, **{k: v for k, v in changes.items() if v is not None}}
            if props.get("datatype") == "hll" and "hll_precision" not in props:
                props["hll_precision"] = crdt.HLL_PRECISION_DEFAULT
        self._set_cluster(self.cluster.with_type(req.name, props, active, self.name))
        self._push_state()
        self._answer(origin, Ok())
