"""A full disk: a node whose disk is (nearly) full takes no more writes, so it never fails a batch
for lack of room, keeps serving reads, and stays up.

Theory of operation
-------------------
The shell measures the engine's space (storage.base.Space: used bytes, and what more fits) after
every batch and every `storage_check_interval_ms`, and hands it to `observe_space`. Writes are
refused once what fits, less twice what is staged and not written yet, falls below
`storage_reserve_bytes`; deletes (tombstones, which free room once reaped) still go into the reserve
until a quarter of it is left, so an operator can make room through the API. A batch that fails for
room anyway (another program filled the disk) marks the disk full until a batch is written.

A node that refuses writes is, for writes, a down primary: as a coordinator it does not count itself
(a fallback takes its copy as a hint, as for any unreachable primary), and as a replica it answers
`disk full`, which its coordinator treats as a lost target: the next fallback takes the copy. Hints,
handoff batches and anti-entropy pushes for it wait until it has room again. Only when W nodes with
room cannot be found does the client get `insufficient_storage` (HTTP 507).
"""

from __future__ import annotations

from dynastore.core.nodebase import NodeBase
from dynastore.storage.base import Space

# What a replica that refuses a write for lack of room answers (ReplicaPutReply.reason).
DISK_FULL = "disk full"


class DiskSpace(NodeBase):
    """Write admission by free space; mixed into NodeCore."""

    space: Space | None
    # A batch failed for room: full until a batch is written.
    _space_failed: bool
    _refusing: bool

    def _init_space(self) -> None:
        self.space = None
        self._space_failed = False
        self._refusing = False

    def observe_space(self, space: Space | None, *, failed: bool | None = None) -> None:
        """What the engine holds and can still take (None: unbounded), measured by the shell;
        `failed`: a batch was just refused for room (True), or written (False; None: no news)."""
        self.space = space
        if failed is not None:
            self._space_failed = failed
        refusing = self._refuses(delete=False)
        if refusing != self._refusing:
            self._refusing = refusing
            free = "?" if space is None else f"{space.free_bytes // (1024 * 1024)} MiB"
            if refusing:
                text = (
                    f"the disk is nearly full ({free} free, storage_reserve_bytes="
                    f"{self.settings.storage_reserve_bytes}): writes go to other replicas until there is room"
                )
                self._event("disk_full", "warning", text, free=free)
            else:
                self._event("disk_room", "info", f"room on the disk again ({free} free): writes are taken", free=free)

    @property
    def space_full(self) -> bool:
        """Whether writes are refused now (for /stats)."""
        return self._refuses(delete=False)

    def _refuses(self, *, delete: bool) -> bool:
        """Whether a write (a delete: `delete`) must not be staged here for lack of room."""
        if self._space_failed:
            return True
        space = self.space
        if space is None:
            return False
        reserve = self.settings.storage_reserve_bytes
        left = space.free_bytes - 2 * self.store.unwritten_bytes
        return left < (reserve // 4 if delete else reserve)
