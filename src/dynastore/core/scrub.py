"""The scrub: every stored copy re-read in the background, so that a byte that rots on disk is found
without waiting for a client to read it.

Theory of operation
-------------------
Every copy a node stores (data and hints) carries a checksum (objects.encode_stored), verified on
every read from storage. A copy that fails it, or does not decode, is treated as missing: discarded,
counted (`storage_corrupt_copies_total`), logged, never returned to a client or sent to a peer; read
repair and anti-entropy bring it back from the other replicas (nodebase.py, `_discard_corrupt`, which
also starts an exchange of its partition at once).

A copy nobody reads could rot unseen, so a pass of the scrub starts every `scrub_interval_ms` and
reads every stored copy, a step at a time: at most `scrub_batch_bytes_max` bytes per step, each step
admitted by the background controller, so a pass slows down when clients suffer. A copy written
before checksums existed is rewritten with one as the pass goes by: after one pass, every copy of an
older data directory is checked.
"""

from __future__ import annotations

from dynastore.core import objects
from dynastore.core.nodebase import NodeBase
from dynastore.storage.base import truncated

SCRUB_AREAS = ("data", "hints")
# Copies per step at most (besides the bytes bound).
SCRUB_BATCH_MAX = 1000
# A step the controller deferred is tried again this soon.
SCRUB_RETRY_MS = 50


class Scrub(NodeBase):
    """The background scrub; mixed into NodeCore."""

    # The area and key the running pass goes on from (None: no pass running).
    _scrub_at: tuple[int, bytes] | None
    _next_scrub_ms: int

    def _init_scrub(self, now_ms: int) -> None:
        self._scrub_at = None
        # The first pass starts one interval after the start (the start-up already reads a lot).
        self._next_scrub_ms = now_ms + self.settings.scrub_interval_ms

    def _scrub_deadline_ms(self) -> int:
        return self._next_scrub_ms

    def _tick_scrub(self, now_ms: int) -> None:
        if now_ms < self._next_scrub_ms:
            return
        if self._scrub_at is None:
            self._scrub_at = (0, b"")
        if not self.controller.admit(now_ms):
            self._next_scrub_ms = now_ms + SCRUB_RETRY_MS
            return
        if self._scrub_step():
            self.stats.scrub_passes += 1
            self._next_scrub_ms = now_ms + self.settings.scrub_interval_ms
        else:
            # The next step as soon as the controller admits it.
            self._next_scrub_ms = now_ms

    def _scrub_step(self) -> bool:
        """One step of the running pass; True when it finished the pass."""
        assert self._scrub_at is not None
        index, start = self._scrub_at
        area = SCRUB_AREAS[index]
        bytes_max = self.settings.scrub_batch_bytes_max
        rows = self._scan(area, start, None, SCRUB_BATCH_MAX, bytes_max)
        for key, raw in rows:
            self.stats.scrubbed_copies += 1
            obj = self._decode_copy(area, key, raw)
            if obj is not None and not objects.is_checked(raw):
                upgraded = objects.encode_stored(obj)
                self._put(area, key, upgraded)
                if area == "hints":
                    self._hint_bytes += len(upgraded) - len(raw)
                self.stats.scrub_upgraded += 1
        if truncated(rows, SCRUB_BATCH_MAX, bytes_max):
            self._scrub_at = (index, rows[-1][0] + b"\x00")
        elif index + 1 < len(SCRUB_AREAS):
            self._scrub_at = (index + 1, b"")
        else:
            self._scrub_at = None
            return True
        return False
