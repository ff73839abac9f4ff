"""A coordinator never writes a version whose clock claims one of its own earlier versions that the
copy it wrote from does not hold: else every replica merging it drops that version, acknowledged or
not. Each scenario below lost an acknowledged write before the fix (issue 13)."""

from __future__ import annotations

import random

from dynastore.core import objects
from dynastore.core.actors import Actors
from dynastore.core.messages import ClientGet, ClientPut, ClientResponse, NotFound, Ok
from dynastore.core.objects import Content
from dynastore.core.staging import StagedStore
from dynastore.core.versions import Context, update
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster
from dynastore.sim.run import SIM_SETTINGS
from dynastore.storage.memory import MemoryEngine

KEY = b"k3"


def cluster(**overrides: object) -> SimCluster:
    c = SimCluster(5, Settings().with_mapping({**SIM_SETTINGS, **overrides}), seed=7)
    c.settle(3000)
    return c


def layout(c: SimCluster) -> tuple[list[str], list[str]]:
    _, plist = c.core("n0").preference_list(b"b", KEY)
    return list(plist.primary_nodes), [node for _, node in plist.fallbacks]


def context_of(response: ClientResponse) -> Context | None:
    if isinstance(response, NotFound):
        return response.context
    if isinstance(response, Ok) and response.found is not None:
        return response.found.context
    return None


def final_values(c: SimCluster) -> list[bytes]:
    response = c.request("n0", ClientGet(b"b", KEY, r="all"))
    assert isinstance(response, Ok) and response.found is not None, response
    return sorted(content.value for _, content in response.found.values)


def test_a_write_acknowledged_by_replicas_survives_the_crash_of_its_coordinator_before_its_own_copy_was_durable() -> (
    None
):
    """The replicas acknowledge w1 while the coordinator's own batch is still being written; it is killed
    and restarts without w1. Its next write of the key, from a read that missed w1, must not claim w1."""
    c = cluster()
    primaries, fallbacks = layout(c)
    coordinator = primaries[0]
    # A first write, so that w1's counter lease is durable and w1 goes to the replicas at once.
    assert isinstance(c.request(coordinator, ClientPut(b"b", b"warm", None, Content(b"x"))), Ok)
    c.nodes[coordinator].commit_ms = (60, 60)
    rid = c.submit(coordinator, ClientPut(b"b", KEY, None, Content(b"w1")))
    c.run_until(lambda: rid in c.replies, 40)
    assert isinstance(c.replies.get(rid), Ok), "w1 is acknowledged by the replicas alone"
    c.crash(coordinator)
    c.nodes[coordinator].commit_ms = None
    c.restart(coordinator)
    c.settle(2000)
    # The replicas that hold w1 are cut off: the read on the coordinator's side misses w1.
    c.partition({coordinator, *fallbacks}, set(primaries[1:]))
    c.settle(4000)
    read = c.request(coordinator, ClientGet(b"b", KEY))
    assert isinstance(c.request(coordinator, ClientPut(b"b", KEY, context_of(read), Content(b"w2"))), Ok)
    c.heal()
    c.settle(20_000)
    assert final_values(c) == [b"w1", b"w2"]


def test_a_fallback_that_delivered_its_hint_and_coordinates_the_key_again_keeps_the_delivered_write() -> None:
    """A fallback coordinates w1 as a hint, delivers it and deletes it; standing in again, from a read that
    missed w1, its next write of the key must not claim w1."""
    c = cluster(anti_entropy_interval_ms=10**9)
    primaries, fallbacks = layout(c)
    fallback = fallbacks[0]
    c.partition({primaries[0], primaries[1]}, {primaries[2], *fallbacks})
    c.settle(4000)
    # The one primary on the fallback's side misses w1, so it cannot show w1 to the later read.
    c.faults.cut.add((fallback, primaries[2]))
    read = c.request(fallback, ClientGet(b"b", KEY))
    assert isinstance(c.request(fallback, ClientPut(b"b", KEY, context_of(read), Content(b"w1"))), Ok)
    c.heal()
    c.settle(5000)
    assert all(c.core(n).hints_pending == 0 for n in c.nodes), "the hints were delivered"
    c.partition({primaries[0], primaries[1]}, {primaries[2], *fallbacks})
    c.settle(4000)
    read = c.request(fallback, ClientGet(b"b", KEY))
    assert isinstance(c.request(fallback, ClientPut(b"b", KEY, context_of(read), Content(b"w2"))), Ok)
    c.heal()
    c.settle(10_000)
    assert final_values(c) == [b"w1", b"w2"]


def test_a_fallback_standing_in_for_a_second_owner_extends_the_hint_it_holds_for_the_first() -> None:
    """A fallback holding w1 in its hint for one owner takes a blind write standing in for another: the
    new version must keep w1 as a sibling, since its dot's clock entry claims w1."""
    c = cluster(hinted_handoff_enabled="false", anti_entropy_interval_ms=10**9)
    primaries, fallbacks = layout(c)
    fallback = fallbacks[0]
    others = set(c.nodes) - {primaries[0]}
    c.partition({primaries[0]}, others)
    c.settle(4000)
    assert isinstance(c.request(fallback, ClientPut(b"b", KEY, None, Content(b"w1"))), Ok)
    c.heal()
    c.settle(3000)
    c.partition({primaries[1]}, set(c.nodes) - {primaries[1]})
    c.settle(4000)
    assert isinstance(c.request(fallback, ClientPut(b"b", KEY, None, Content(b"w2"))), Ok)
    c.heal()
    c.settle(3000)
    assert final_values(c) == [b"w1", b"w2"]


def test_past_its_byte_bound_the_memory_of_deleted_copies_gives_way_to_a_new_actor() -> None:
    """A fallback remembers each delivered hint that held its versions, bounded in bytes: once the bound
    is passed it names its next versions with a new actor (which claims nothing) and forgets the rest."""
    c = cluster(forgotten_dots_bytes_max=500, anti_entropy_interval_ms=10**9)
    primaries, fallbacks = layout(c)
    fallback = fallbacks[0]
    core = c.core(fallback)
    before = core.actor
    c.partition({primaries[0]}, set(c.nodes) - {primaries[0]})
    c.settle(4000)
    written = 0
    for i in range(200):
        key = b"m%d" % i
        _, plist = core.preference_list(b"b", key)
        stand_ins = [t.node for t in plist.targets(core.healthy(c.now_ms)) if t.hint_for is not None]
        if fallback in stand_ins:
            assert isinstance(c.request(fallback, ClientPut(b"b", key, None, Content(b"v"))), Ok)
            written += 1
    assert written >= 5
    assert core.hints_pending == written and core.actor == before
    c.heal()
    c.settle(5000)
    assert core.hints_pending == 0
    assert core.actor != before, "the remembered keys passed 500 bytes"
    assert core.actors.forgotten_bytes <= 500


def test_a_clean_restart_keeps_the_actor_and_what_it_forgot_and_an_unclean_one_takes_a_new_actor() -> None:
    """A clean stop writes down the forgotten keys after the last write: the node goes on with the same
    actor (clocks do not grow by an entry per restart) and still knows what it must not claim; after
    a crash it cannot know, and takes a new actor."""
    c = cluster(anti_entropy_interval_ms=10**9)
    primaries, fallbacks = layout(c)
    fallback = fallbacks[0]
    c.partition({primaries[0]}, set(c.nodes) - {primaries[0]})
    c.settle(4000)
    assert isinstance(c.request(fallback, ClientPut(b"b", KEY, None, Content(b"w1"))), Ok)
    c.heal()
    c.settle(5000)
    core = c.core(fallback)
    assert core.hints_pending == 0 and core.actors.forgotten, "the delivered hint's versions are remembered"
    actor, forgotten = core.actor, dict(core.actors.forgotten)
    c.stop(fallback)
    c.restart(fallback)
    again = c.core(fallback)
    assert again.actor == actor and again.actors.forgotten == forgotten
    c.crash(fallback)
    c.restart(fallback)
    assert c.core(fallback).actor != actor and not c.core(fallback).actors.forgotten


def test_a_write_keeping_one_value_never_claims_a_forgotten_version_even_one_its_context_names() -> None:
    """A forgotten version of this node's actor that the client's context names may be claimed by the
    next write (the client saw it), but not by a write to a bucket keeping one value, which must know
    the timestamp of all it replaces: that write takes a new actor."""
    actors = Actors("n0", StagedStore(MemoryEngine()), random.Random(1), Settings())
    first = actors.next_dot(b"k", None, Context())
    actors.forget(b"k", objects.encode(update(None, Context(), first, Content(b"v"), 1)))
    seen = Context(((first.actor, first.counter),))
    assert actors.next_dot(b"k", None, seen).actor == first.actor
    fresh = actors.next_dot(b"k", None, seen, trust_context=False)
    assert fresh.actor != first.actor and fresh.actor == actors.actor
