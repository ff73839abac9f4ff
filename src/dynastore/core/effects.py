"""What a NodeCore and the shell that drives it hand each other, besides peer messages and client requests.

The core returns effects (`Send`, `Reply`, `Stop`, `Event`) from `take_free` and `batch_written`, and batches
of writes from `take_batch`; the shell performs the effects and writes the batches, and does nothing
else with them. Admin requests (membership, staged changes, repair, security) reach the core through
`on_request` like client requests, but they never cross the node-to-node wire, so they are not part
of the message codec.
Plain frozen values only: this module must never hold protocol logic or import the rest of the core
beyond the message types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dynastore.core.messages import ClientResponse, Message
from dynastore.storage.base import Op


@dataclass(frozen=True, slots=True)
class Send:
    """Send `msg` to the peer named `dst` (at `address` when the peer is not a known member yet)."""

    dst: str
    msg: Message
    address: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer the client request the shell numbered `request_id`."""

    request_id: int
    response: ClientResponse


@dataclass(frozen=True, slots=True)
class Stop:
    """This node has left the cluster and handed off everything it held: the shell stops the process."""

    reason: str


EventField = str | int | float | bool


@dataclass(frozen=True, slots=True)
class Event:
    """Something an operator may want to hear of: a peer judged down or back, a ring change, a transfer
    started or finished, hints delivered, keys repaired by anti-entropy, a membership or security
    change, a full disk, a corrupt copy. The core does no I/O: the shell logs it, as `text` in the text
    log format and as `kind` plus every field in the JSON one.

    `kind` is a stable, snake_case name (the README lists them); `fields` are plain values, in order."""

    kind: str
    level: Literal["debug", "info", "warning", "error"]
    text: str
    fields: tuple[tuple[str, EventField], ...] = ()


Effect = Send | Reply | Stop | Event


@dataclass(frozen=True, slots=True)
class ClientJoin:
    """Admin: join the cluster that the member at `seed` belongs to (staged: wait for a commit)."""

    seed_host: str
    seed_port: int
    stage: bool = False


@dataclass(frozen=True, slots=True)
class ClientLeave:
    """Admin: this node hands off everything it holds, then leaves the cluster and stops (staged: once
    the staged changes are committed)."""

    stage: bool = False


@dataclass(frozen=True, slots=True)
class ClientRemove:
    """Admin: `node` is gone for good; its partitions are rebuilt from the other replicas."""

    node: str
    stage: bool = False


@dataclass(frozen=True, slots=True)
class ClientReplace:
    """Admin: stage the replace of `old` by `new` (a node staged to join), which takes its partitions."""

    old: str
    new: str


@dataclass(frozen=True, slots=True)
class ClientStaged:
    """Admin: commit the staged membership changes (those of plan `plan_id`, when given), or clear
    them (clusterplan.py)."""

    action: Literal["commit", "clear"]
    plan_id: str = ""


@dataclass(frozen=True, slots=True)
class ClientRepair:
    """Admin: exchange anti-entropy trees now for `partition`, or for every partition this node holds (None)."""

    partition: int | None


SecurityAction = Literal["enable", "disable", "add_user", "del_user", "grant", "revoke"]


@dataclass(frozen=True, slots=True)
class SecurityChange:
    """Admin: change the cluster's security metadata (the API has checked the caller may). A new
    user's password arrives hashed (security.hash_password), never in clear."""

    action: SecurityAction
    user: str = ""
    password_hash: bytes = b""
    permissions: tuple[str, ...] = ()
    scope: str = ""


AdminRequest = ClientJoin | ClientLeave | ClientRemove | ClientReplace | ClientStaged | ClientRepair | SecurityChange


def seed_label(host: str, port: int) -> str:
    """How a peer known only by its address is named in `on_unreachable`."""
    return f"@{host}:{port}"


@dataclass(frozen=True, slots=True)
class Batch:
    """Staged writes to apply atomically, as batch `number` (batches are numbered from 1 and written
    one at a time, in order). `sync`: after writing them, force the engine's buffered writes to disk
    (buffered mode's periodic sync; a durable engine syncs every write itself). Once the batch is on
    disk the shell calls `batch_written()` and performs the effects it returns."""

    number: int
    ops: tuple[Op, ...]
    sync: bool = False
