"""Who names this node's versions, and the dots it hands out: the actor and its counters.

Theory of operation
-------------------
Every write gets a dot `(actor, counter)` from the node that coordinates it. The actor is the node
name, an epoch drawn once per data directory (a node that lost its disk is a stranger) and a
generation; counters come from one node-wide sequence, leased in blocks whose end is persisted, so no
dot is ever handed out twice.

A version vector entry `actor: n` claims every version that actor wrote to the key up to `n`, so a
coordinator may extend it only from a copy that holds all of them. A node loses that certainty when a
copy it wrote is lost (staged but not yet durable when the process died: its replicas may have
acknowledged it) or deleted (a delivered hint, a handed-off stray, a reaped tombstone): a later write
under the same actor would claim versions it never saw, and every replica merging it would drop them.
So the generation is new at every start that follows an unclean stop, the keys whose deleted copies
held the current actor's versions are remembered (bounded in bytes), and a write that would claim a
forgotten version, or a memory grown past its bound, takes a new generation: a fresh actor claims
nothing. A clean stop (`save`) writes the memory down after the last write the node coordinated, so
the next start goes on with the same actor and clocks do not grow by an entry per restart.

What this module persists (epoch, generation, lease end) is staged in the node's store; nothing
carrying a new actor or counter may leave before the batch holding it is durable (`durable_after`).
"""

from __future__ import annotations

import hashlib
import random

import msgpack

from dynastore.core import objects
from dynastore.core.objects import Object
from dynastore.core.staging import StagedStore
from dynastore.core.versions import Context, Dot
from dynastore.settings import Settings

META_EPOCH = b"epoch"
META_GENERATION = b"actor_generation"
META_COUNTER = b"counter_lease_end"
# Written by a clean stop (the forgotten keys), consumed by the next start.
META_FORGOTTEN = b"forgotten_dots"
# What one remembered key costs besides its bytes (a dict entry and an int), for the byte bound.
FORGOTTEN_ENTRY_BYTES = 100
# Node names longer than this are shortened to a digest inside actor ids (an actor is at most 255 bytes).
ACTOR_NAME_BYTES_MAX = 200


def _forgotten_from(raw: bytes | None) -> list[tuple[bytes, int]] | None:
    """The keys a clean stop wrote down, or None (none written, or unreadable: then the stop counts
    as unclean, which is always safe)."""
    if raw is None:
        return None
    try:
        data = msgpack.unpackb(raw, raw=False)
    except Exception:
        return None
    if not isinstance(data, list) or not all(
        isinstance(e, list) and len(e) == 2 and isinstance(e[0], bytes) and isinstance(e[1], int) for e in data
    ):
        return None
    return [(e[0], e[1]) for e in data]


class Actors:
    """This node's current actor, its dot counter, and what it must not claim (see the module docstring)."""

    def __init__(self, name: str, store: StagedStore, rng: random.Random, settings: Settings) -> None:
        self._name = name
        self._store = store
        self._lease_count = settings.counter_lease_count
        self._forgotten_max = settings.forgotten_dots_bytes_max
        raw_epoch = store.get("meta", META_EPOCH)
        if raw_epoch is None:
            self.epoch = rng.getrandbits(32)
            store.put("meta", META_EPOCH, self.epoch.to_bytes(4, "big"))
        else:
            self.epoch = int.from_bytes(raw_epoch, "big")
        raw_generation = store.get("meta", META_GENERATION)
        self.generation = 0 if raw_generation is None else int.from_bytes(raw_generation, "big")
        self.actor = b""
        # Keys whose deleted local copy held versions of the current actor, with the newest such counter.
        self.forgotten: dict[bytes, int] = {}
        self.forgotten_bytes = 0
        saved = _forgotten_from(store.get("meta", META_FORGOTTEN))
        if saved is None or self.generation == 0:
            # The last stop was not clean (or there was none): copies this node wrote may be lost.
            self.new_actor()
        else:
            store.put("meta", META_FORGOTTEN, None)
            self._set_actor()
            for skey, counter in saved:
                self.forgotten[skey] = counter
                self.forgotten_bytes += len(skey) + FORGOTTEN_ENTRY_BYTES
        raw_lease = store.get("meta", META_COUNTER)
        # Counters below the persisted lease end may have been handed out before a crash: skip them.
        self._counter = 0 if raw_lease is None else int.from_bytes(raw_lease, "big")
        self._lease_end = self._counter

    def new_actor(self) -> None:
        """Name the next versions with a fresh actor, one that has written nothing anywhere."""
        self.generation += 1
        self._store.put("meta", META_GENERATION, self.generation.to_bytes(8, "big"))
        self._set_actor()
        self.forgotten = {}
        self.forgotten_bytes = 0

    def _set_actor(self) -> None:
        name = self._name.encode()
        if len(name) > ACTOR_NAME_BYTES_MAX:
            name = hashlib.blake2b(name, digest_size=16).hexdigest().encode()
        self.actor = name + f"#{self.epoch:08x}.{self.generation}".encode()

    def save(self) -> None:
        """A clean stop, after the last write this node coordinates: what it forgot is written down, so
        that the next start may go on with the same actor."""
        self._store.put("meta", META_FORGOTTEN, msgpack.packb(sorted(self.forgotten.items()), use_bin_type=True))

    def next_dot(self, skey: bytes, local: Object | None, context: Context, *, trust_context: bool = True) -> Dot:
        """A fresh dot for a write of `skey` based on `local` (everything this node holds of the key) and
        the client's `context`; from a new actor if the current one would claim a forgotten version.

        A forgotten version the context names may be claimed (the client saw it), unless `trust_context`
        is off: a bucket keeping one value needs the timestamp of every version a write replaces, which
        only a version held here has (objects.py, "One value per key")."""
        held = 0 if local is None else local.clock.get(self.actor)
        named = max(
            context.counters().get(self.actor, 0),
            max((d.counter for d in context.dots if d.actor == self.actor), default=0),
        )
        if self.forgotten.get(skey, 0) > (max(held, named) if trust_context else held):
            self.new_actor()
            held = named = 0
        self._counter = max(self._counter, held, named) + 1
        if self._counter > self._lease_end:
            # Persist the end of a new block before using any counter in it; the lease rides in the
            # same batch as the write that needed it.
            self._lease_end = self._counter + self._lease_count
            self._store.put("meta", META_COUNTER, self._lease_end.to_bytes(8, "big"))
        return Dot(self.actor, self._counter)

    def claims_beyond_lease(self, context: Context) -> bool:
        """Whether a client's context names a version of this node (of any generation) past every counter
        it has leased: forged, or from nowhere. Writing from it would push the counter towards overflow,
        so such a write is refused."""
        prefix = self.actor.rsplit(b".", 1)[0] + b"."
        limit = self._lease_end
        return any(actor.startswith(prefix) and counter > limit for actor, counter in context.vector) or any(
            dot.actor.startswith(prefix) and dot.counter > limit for dot in context.dots
        )

    def durable_after(self) -> int:
        """The batch that makes the current actor and counter lease durable (0: they are)."""
        return max(self._store.durable_after("meta", META_COUNTER), self._store.durable_after("meta", META_GENERATION))

    def forget(self, skey: bytes, raw: bytes | None) -> None:
        """A local copy of `skey` (its data or a hint) is about to be deleted: remember the newest version
        of the current actor it held, so the next write of this key here knows what it lacks."""
        if raw is None:
            return
        try:
            counter = objects.decode_stored(raw).clock.get(self.actor)
        except objects.CorruptCopy:
            # What it held cannot be known: name the next versions with a fresh actor.
            self.new_actor()
            return
        if counter == 0:
            return
        if skey not in self.forgotten:
            self.forgotten_bytes += len(skey) + FORGOTTEN_ENTRY_BYTES
        self.forgotten[skey] = max(counter, self.forgotten.get(skey, 0))
        if self.forgotten_bytes > self._forgotten_max:
            self.new_actor()

    def written_elsewhere(self, skey: bytes, counter: int) -> None:
        """This actor's version `counter` of `skey` was written to other nodes only (this node's disk
        was full): like a deleted copy, the next write of the key here must know it or take a new actor."""
        if skey not in self.forgotten:
            self.forgotten_bytes += len(skey) + FORGOTTEN_ENTRY_BYTES
        self.forgotten[skey] = max(counter, self.forgotten.get(skey, 0))
        if self.forgotten_bytes > self._forgotten_max:
            self.new_actor()

    def recall(self, skey: bytes) -> None:
        """A copy of `skey` holding the current actor's newest version of it is staged: nothing of this
        actor is forgotten for the key any more."""
        if self.forgotten.pop(skey, None) is not None:
            self.forgotten_bytes -= len(skey) + FORGOTTEN_ENTRY_BYTES
