"""Operations in flight: the record a node keeps of each thing it started and is waiting on.

Every operation is registered with a deadline in the node's op registry (see nodebase.py) and ends in
one of three ways: the replies it needs arrive, a peer it waits on is found unreachable, or its
deadline passes. The part of the node that started an operation drives it; these records only hold
what is needed to finish or abandon it, and must never act on their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dynastore.core.messages import ClientIndexQuery, ClientListKeys, ClientPut
from dynastore.core.objects import Object
from dynastore.core.quorum import GetTally, PutTally
from dynastore.core.ring import PreferenceList, Target
from dynastore.core.versions import Context, Dot


@dataclass(frozen=True, slots=True)
class ToClient:
    """The answer goes to the client request the shell numbered `request_id`."""

    request_id: int


@dataclass(frozen=True, slots=True)
class ToPeer:
    """The answer goes back to the node that forwarded the request, as the reply to its `req`."""

    node: str
    req: int


Origin = ToClient | ToPeer


@dataclass
class GetOp:
    """A read this node coordinates."""

    origin: Origin | None
    bucket: bytes
    key: bytes
    tally: GetTally
    deadline_ms: int
    plist: PreferenceList | None
    replied: bool = False
    # Set for the read that precedes reaping a tombstone: the object every primary must hold.
    reap: Object | None = None
    # The batch that makes what the local read saw durable (0: it was on disk); the answer waits for it.
    after: int = 0
    # A data-type read: the answer shows deletions' siblings too (datatypes.py).
    with_deletions: bool = False
    # Speculative retry (speculative.py): the replicas not asked yet, and when to ask them.
    held: tuple[Target, ...] = ()
    speculate_at_ms: int = 0
    # When each remote replica was asked (its reply's latency feeds the speculative retry's histogram).
    asked_ms: dict[str, int] = field(default_factory=dict)


@dataclass
class PutOp:
    """A write (or delete) this node coordinates."""

    origin: Origin
    bucket: bytes
    key: bytes
    tally: PutTally
    deadline_ms: int
    plist: PreferenceList
    obj: Object
    # The bucket keeps one value per key: replicas resolve what they merge to it.
    resolve_one: bool
    reply_context: Context
    return_body: bool
    replied: bool = False
    # Targets that answered they have no room (diskspace.py): a failed write then says so (507).
    full_replicas: int = 0
    # A forwarded write's identity and the dot it was given, sent along to every replica.
    write_id: bytes = b""
    dot: Dot | None = None
    # A data-type write: the answer with the body shows deletions' siblings too.
    with_deletions: bool = False
    # The targets asked to sync their copy before acknowledging it (every target of a durable write;
    # the one, or dw, a buffered write's coordinator picks); a substitute for one of them is asked too.
    sync_nodes: set[str] = field(default_factory=set)


@dataclass
class ForwardOp:
    """A write handed to another node to coordinate; `tried` lists every coordinator asked so far."""

    origin: Origin
    request: ClientPut
    dst: str
    tried: list[str]
    deadline_ms: int
    # Set when this node, a primary, handed the write to the replica its context prefers: the request's
    # own deadline. `deadline_ms` is then halfway to it, when this node coordinates the write itself.
    local_deadline_ms: int = 0


@dataclass
class ListOp:
    """One page of a listing, asked of `peer` (a replica of the page's partition); `others` are the
    replicas to ask if it cannot answer."""

    origin: Origin
    request: ClientListKeys
    peer: str
    others: list[str]
    deadline_ms: int


@dataclass
class IndexQueryOp:
    """A page of a coverage query this node coordinates (indexquery.py): each partition's candidate
    replicas and those tried, the answers in so far (positions, where the scan stopped, done), and
    the scan op asking for each partition still waited on."""

    origin: Origin
    request: ClientIndexQuery
    candidates: dict[int, list[str]]
    deadline_ms: int
    tried: dict[int, set[str]] = field(default_factory=dict)
    answers: dict[int, tuple[list[tuple[bytes, bytes]], tuple[bytes, bytes] | None, bool]] = field(default_factory=dict)
    waiting: dict[int, int] = field(default_factory=dict)


@dataclass
class IndexScanOp:
    """One replica's part of a coverage query: query op `query` asked `peer` for `partitions`."""

    query: int
    peer: str
    partitions: tuple[int, ...]
    deadline_ms: int


@dataclass
class HintOp:
    """A batch of hints held for `owner`, delivered to the nodes in `waiting` (the owner itself, or the
    keys' current replicas once the owner has left the cluster); `sent` is what to delete once every
    one of them has acknowledged."""

    owner: str
    sent: list[tuple[bytes, bytes]]
    deadline_ms: int
    waiting: set[str]


@dataclass
class JoinOp:
    """A join request sent to the seed named `seed`."""

    origin: Origin
    deadline_ms: int
    seed: str


@dataclass
class PullOp:
    """A batch of a partition being pulled from `source` for the transition `transition`."""

    transition: bytes
    partition: int
    source: str
    after: bytes
    deadline_ms: int


@dataclass
class StrayOp:
    """Keys this node holds but no longer replicates, offered to their replicas before deletion."""

    waiting: set[str]
    sent: list[tuple[bytes, bytes]]
    deadline_ms: int


@dataclass
class ReapCheckOp:
    """One round of asking every member whether it holds a copy (a hint, or data it does not replicate)
    of keys whose tombstones this node would reap; `keys` in the order asked, with the tombstone held
    here and the primaries of each."""

    keys: tuple[bytes, ...]
    tombstones: dict[bytes, Object]
    primaries: dict[bytes, tuple[str, ...]]
    waiting: set[str]
    deadline_ms: int
    # Keys some member holds another copy of: not reaped this round.
    held: set[bytes] = field(default_factory=set)


# Where an exchange stands: comparing tree levels, comparing segments, waiting for the controller to
# admit its next objects request, waiting for objects, waiting for the peer to take merged ones back.
ExchangeStage = Literal["tree", "segments", "deferred", "objects", "push"]


@dataclass
class ExchangeOp:
    """One anti-entropy exchange in progress, driven by this node (antientropy.py)."""

    peer: str
    partition: int
    n_val: int
    deadline_ms: int
    level: int = 0
    segments: list[int] = field(default_factory=list)
    batch: list[int] = field(default_factory=list)
    differing: list[bytes] = field(default_factory=list)
    stage: ExchangeStage = "tree"
    # Keys repaired so far in this exchange (what `cluster aae-status` shows of the last one).
    repaired: int = 0
    # Which try this is of an exchange an operator asked for (`cluster repair`); 0: a scheduled one.
    attempt: int = 0


AnyOp = (
    GetOp
    | PutOp
    | ForwardOp
    | ListOp
    | IndexQueryOp
    | IndexScanOp
    | HintOp
    | JoinOp
    | PullOp
    | StrayOp
    | ReapCheckOp
    | ExchangeOp
)
