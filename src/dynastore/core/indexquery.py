"""Secondary-index queries as coverage queries: the coordinator's state machine and the replica's side.

Theory of operation
-------------------
A client asks for one page of a query (ClientIndexQuery: a bucket, a field, a range of sort terms,
the position after which to start, at most `max_results`). The coordinator takes, for every
partition, the reachable primaries of the bucket's n_val as candidates, and builds a coverage plan
(coverage.py): few nodes, itself first, each asked once (IndexScan) for all the partitions it
answers for. Its own partitions it scans at once. Each replica scans each asked partition
(indexes.scan) for at most `max_results` positions after the continuation, within a share of
`index_scan_bytes_max`, and says per partition where it stopped and whether it is done; a replica
that does not hold a partition by its own view of the ring says so (done false, nothing read), and
that partition is asked of another candidate.

A replica that does not answer within `index_replica_timeout_ms`, or is found unreachable, or whose
answer is malformed (positions out of the range or out of order), is replaced for its partitions by
each one's next candidate not yet tried; a partition with none left fails the page (`unavailable`).
The whole page has the request's timeout.

Once every partition is answered, the page is merged (coverage.page_of): every position up to the
lowest point where a partition's scan stopped short is known, so the page is the first
`max_results` of those, and the continuation is where the next page starts. Each partition answered
by one replica, each key lives in one partition: a page holds each indexed key once per matching
term, and paging by continuation visits each once.
"""

from __future__ import annotations

import itertools

from dynastore.core import coverage, indexes, placement
from dynastore.core.messages import ClientIndexQuery, Failure, IndexScan, IndexScanReply, Ok
from dynastore.core.nodebase import NodeBase
from dynastore.core.ops import IndexQueryOp, IndexScanOp, Origin

Answer = tuple[list[indexes.Position], indexes.Position | None, bool]


class IndexQueries(NodeBase):
    """The coverage query of a secondary index (see the module docstring)."""

    def _start_index_query(self, origin: Origin, req: ClientIndexQuery, now_ms: int) -> None:
        problem = self._index_query_problem(req)
        if problem is not None:
            self._answer(origin, Failure("bad_request", problem))
            return
        candidates = {p: self._list_replicas(req.bucket, p, now_ms) for p in range(self.ring.size)}
        stranded = [p for p, nodes in candidates.items() if not nodes]
        if stranded:
            self._answer(origin, Failure("unavailable", f"no replica of partition {stranded[0]} is reachable"))
            return
        op = IndexQueryOp(origin, req, candidates, self._timeout(req.timeout_ms, now_ms))
        query_id = self._register(op)
        self._ask_replicas(query_id, op, coverage.plan(candidates, self.name), now_ms)
        self._maybe_end_query(query_id, op)

    def _index_query_problem(self, req: ClientIndexQuery) -> str | None:
        failure = self._check_key(req.bucket, None)
        if failure is not None:
            return failure.reason
        problem = indexes.query_problem(self.settings, req.field, req.low, req.high)
        if problem is not None:
            return problem
        page_max = self.settings.index_page_results_max
        if not 1 <= req.max_results <= page_max:
            return f"max_results must be 1 to {page_max}"
        if req.after is not None and req.field.endswith(indexes.INT) and len(req.after[0]) != 8:
            return "a continuation of an _int query names an 8-byte term"
        return None

    def _ask_replicas(self, query_id: int, op: IndexQueryOp, assignment: dict[str, list[int]], now_ms: int) -> None:
        req = op.request
        for node, partitions in assignment.items():
            for partition in partitions:
                op.tried.setdefault(partition, set()).add(node)
            if node == self.name:
                for partition in partitions:
                    op.answers[partition] = self._index_step(req, partition, self._scan_share(len(partitions)))
                continue
            deadline = min(op.deadline_ms, now_ms + self.settings.index_replica_timeout_ms)
            scan_id = self._register(IndexScanOp(query_id, node, tuple(partitions), deadline))
            for partition in partitions:
                op.waiting[partition] = scan_id
            after = () if req.after is None else req.after
            limit, bytes_max = req.max_results, self.settings.index_scan_bytes_max
            msg = IndexScan(
                scan_id, req.bucket, req.field, req.low, req.high, after, limit, bytes_max, tuple(partitions)
            )
            self._send(node, msg)

    def _scan_share(self, partitions: int) -> int:
        return max(1, self.settings.index_scan_bytes_max // max(1, partitions))

    def _index_step(self, req: ClientIndexQuery, partition: int, bytes_max: int) -> Answer:
        return indexes.scan(
            self, partition, req.bucket, req.field, req.low, req.high, req.after, req.max_results, bytes_max
        )

    def _holds_partition(self, bucket: bytes, partition: int) -> bool:
        """Whether this node is, by its own view of the ring, a primary of `partition` for `bucket`."""
        n_val = int(self._props(bucket)["n_val"])
        return self.name in placement.placement(self.cluster.ring, partition, n_val).plist.primary_nodes

    # --- The replica's side ----------------------------------------------------------------------------

    def _on_index_scan(self, src: str, msg: IndexScan, now_ms: int) -> None:
        after = None if not msg.after else (msg.after[0], msg.after[1])
        # What the coordinator asks for is bounded by this node's own limits too: a short answer is
        # one the coordinator pages on from (it says where it stopped), never a wrong one.
        limit = min(msg.limit, self.settings.index_page_results_max)
        share = max(1, min(msg.bytes_max, self.settings.index_scan_bytes_max) // len(msg.partitions))
        counts: list[int] = []
        terms: list[bytes] = []
        found_keys: list[bytes] = []
        last_terms: list[bytes] = []
        last_keys: list[bytes] = []
        done: list[bool] = []
        for partition in msg.partitions:
            if not self._holds_partition(msg.bucket, partition):
                counts.append(0)
                last_terms.append(b"")
                last_keys.append(b"")
                done.append(False)
                continue
            positions, last, finished = indexes.scan(
                self, partition, msg.bucket, msg.field, msg.low, msg.high, after, limit, share
            )
            counts.append(len(positions))
            terms.extend(term for term, _ in positions)
            found_keys.extend(key for _, key in positions)
            last_terms.append(b"" if last is None else last[0])
            last_keys.append(b"" if last is None else last[1])
            done.append(finished or last is None)
        reply = IndexScanReply(
            msg.req,
            msg.partitions,
            tuple(counts),
            tuple(terms),
            tuple(found_keys),
            tuple(last_terms),
            tuple(last_keys),
            tuple(done),
        )
        self._send(src, reply)

    # --- The coordinator's side --------------------------------------------------------------------------

    def _on_index_scan_reply(self, src: str, msg: IndexScanReply, now_ms: int) -> None:
        scan = self._ops.get(msg.req)
        if not isinstance(scan, IndexScanOp) or scan.peer != src:
            return
        self._finish(msg.req)
        op = self._ops.get(scan.query)
        if not isinstance(op, IndexQueryOp):
            return
        answers = _answers_of(op.request, scan, msg)
        if answers is None:
            self._event(
                "bad_index_answer",
                "warning",
                f"{src} answered an index scan with positions outside the query or out of order; asking another",
                peer=src,
            )
            self._replace_replica(scan.query, op, list(scan.partitions), now_ms)
            return
        refused: list[int] = []
        for partition, answer in answers.items():
            if op.waiting.get(partition) != msg.req:
                continue
            del op.waiting[partition]
            if answer is None:
                refused.append(partition)
            else:
                op.answers[partition] = answer
        if refused:
            self._replace_replica(scan.query, op, refused, now_ms)
            return
        self._maybe_end_query(scan.query, op)

    def _replace_replica(self, query_id: int, op: IndexQueryOp, partitions: list[int], now_ms: int) -> None:
        for partition in partitions:
            op.waiting.pop(partition, None)
        asked, stranded = coverage.fallback(partitions, op.candidates, op.tried)
        if stranded:
            self._end_query(query_id, op)
            self._answer(op.origin, Failure("unavailable", f"no replica of partition {stranded[0]} answered"))
            return
        self._ask_replicas(query_id, op, asked, now_ms)
        self._maybe_end_query(query_id, op)

    def _maybe_end_query(self, query_id: int, op: IndexQueryOp) -> None:
        if op.waiting or query_id not in self._ops:
            return
        assert len(op.answers) == self.ring.size, (len(op.answers), self.ring.size)
        page = coverage.page_of(op.answers, op.request.max_results)
        self._end_query(query_id, op)
        self._answer(op.origin, Ok(page=page))

    def _end_query(self, query_id: int, op: IndexQueryOp) -> None:
        for scan_id in set(op.waiting.values()):
            self._finish(scan_id)
        op.waiting.clear()
        self._finish(query_id)

    def _expire_index_query(self, query_id: int, op: IndexQueryOp, now_ms: int) -> None:
        self._end_query(query_id, op)
        self._answer(op.origin, Failure("timeout", "the index query did not finish within its timeout"))

    def _lost_index_query(self, query_id: int, op: IndexQueryOp, peer: str, reason: str, now_ms: int) -> None:
        """The query's own op waits on no peer: its scans do (`_lost_index_scan`)."""

    def _expire_index_scan(self, scan_id: int, scan: IndexScanOp, now_ms: int) -> None:
        self._finish(scan_id)
        op = self._ops.get(scan.query)
        # Past the query's own deadline the query times out as a whole (its own op's expiry), rather
        # than asking, and timing out, every other candidate at once.
        if isinstance(op, IndexQueryOp) and op.deadline_ms > now_ms:
            late = [p for p in scan.partitions if op.waiting.get(p) == scan_id]
            if late:
                self._replace_replica(scan.query, op, late, now_ms)

    def _lost_index_scan(self, scan_id: int, scan: IndexScanOp, peer: str, reason: str, now_ms: int) -> None:
        if peer == scan.peer:
            self._expire_index_scan(scan_id, scan, now_ms)


def _answers_of(req: ClientIndexQuery, scan: IndexScanOp, msg: IndexScanReply) -> dict[int, Answer | None] | None:
    """A replica's answer per partition (None: it does not hold the partition), or None for an answer
    that breaks the query: other partitions than asked, positions outside the range or after where
    the partition's scan stopped, or out of order."""
    if msg.partitions != scan.partitions:
        return None
    out: dict[int, Answer | None] = {}
    offset = 0
    for i, partition in enumerate(msg.partitions):
        count = msg.counts[i]
        positions = list(zip(msg.terms[offset : offset + count], msg.keys[offset : offset + count], strict=True))
        offset += count
        has_last = bool(msg.last_terms[i] or msg.last_keys[i])
        last = (msg.last_terms[i], msg.last_keys[i]) if has_last else None
        if not msg.done[i] and last is None:
            if positions:
                return None
            out[partition] = None
            continue
        if any(b <= a for a, b in itertools.pairwise(positions)):
            return None
        if not all(indexes.in_query(req.field, req.low, req.high, req.after, p) for p in positions):
            return None
        if last is not None and positions and positions[-1] > last:
            return None
        if not msg.done[i] and req.after is not None and last is not None and last <= req.after:
            return None
        out[partition] = (positions, last, msg.done[i])
    return out
