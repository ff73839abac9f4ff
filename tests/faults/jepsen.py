"""A Jepsen-style run against real node processes in network namespaces.

Clients (threads) add unique elements to a few sets by read-modify-write, write unique values to
independent keys, increment data-type counters and add (and, with the context of a read, remove)
unique elements of data-type sets, and (with `index_share`) write new objects each with
secondary-index entries and query the index page by page, recording every operation as ok / fail /
unknown, while a nemesis cuts the network (halves, one node isolated, a bridge node seeing both
sides), SIGKILLs and restarts nodes, SIGSTOPs and SIGCONTs them, and restarts one under `faketime`
with a skewed clock. Then everything heals, the run waits for convergence (hint queues empty,
replicas holding equal versions, Merkle roots equal) and the final reads go through the same
checkers as the simulator. Last, every node is stopped and its data
directory read offline: each acknowledged write must be covered on at least W nodes by a copy that
still holds what it wrote (the copies checker of the simulator).

The index workload's final queries run from every node in turn, after convergence and before the
nodes stop: an exact query on each written object's own term, and, from each node as coordinator
(which answers its own partitions from its own index), the shared term page by page and a range over
every object's integer term. So an entry one replica failed to write shows as a lost key.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import msgpack
from http_util import call, obj

from dynastore import localnet
from dynastore.core import hints, keys, objects
from dynastore.core.hashing import key_partition
from dynastore.core.secret import CONTEXT, derive
from dynastore.core.versions import Context, Dot
from dynastore.localcluster import LocalCluster, NodeProc
from dynastore.sim.checkers import (
    FAIL,
    OK,
    UNKNOWN,
    Copies,
    CounterOp,
    DataTypeVerdict,
    ElementOp,
    IndexQuery,
    IndexVerdict,
    IndexWrite,
    RegisterVerdict,
    RegisterWrite,
    SetOp,
    SetVerdict,
    check_copies,
    check_datatypes,
    check_indexes,
    check_registers,
    check_sets,
)
from dynastore.storage.lmdb_engine import LmdbEngine

CLIENT_TIMEOUT_S = 4.0
# The bucket types of the data-type workload, created and activated before it starts.
COUNTER_TYPE, SET_TYPE = "jepsen-counters", "jepsen-sets"
# The index workload: each object `i<n>` carries id_int n and name_bin i<n> (its own terms) and the
# shared grp_bin term, so one query of that term (or a range of id_int) spans every object.
INDEX_BUCKET, SHARED_TERM = "indexed", "all"
# Pages of the index queries while faults run, and at most how many of them one query follows.
INDEX_PAGE_RESULTS, INDEX_QUERY_PAGES_MAX = 50, 40
# The credentials every request of a run carries (set by `run` when the cluster's security is on).
_AUTH: dict[str, str] = {}


def _call(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout_s: float = 15.0
) -> tuple[int, dict[str, str], bytes]:
    return call(method, url, body, {**(headers or {}), **_AUTH}, timeout_s)


# The write quorum of the workload's buckets (the default, w=2).
STORE_W = 2


def parse_context(vclock: str | None, bucket: str, key: str, context_key: bytes) -> Context:
    from dynastore.core import context as ctxcodec

    if not vclock:
        return Context()
    return ctxcodec.decode(vclock, context_key, bucket.encode(), key.encode())


@dataclass
class Report:
    sets: SetVerdict
    registers: RegisterVerdict
    datatypes: DataTypeVerdict
    writes_during_faults: int
    acked_during_faults: int
    converged_s: float | None
    indexes: IndexVerdict | None = None
    problems: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        indexes_ok = self.indexes is None or self.indexes.ok
        return self.sets.ok and self.registers.ok and self.datatypes.ok and indexes_ok and not self.problems

    def text(self) -> str:
        availability = self.acked_during_faults / self.writes_during_faults if self.writes_during_faults else 1.0
        lines = [
            f"sets: {self.sets.acknowledged} acknowledged, {len(self.sets.lost)} lost, "
            f"{len(self.sets.unexpected)} unexpected, {self.sets.unknown} unknown",
            f"registers: {self.registers.acknowledged} acknowledged, {len(self.registers.lost)} lost, "
            f"{len(self.registers.unexpected)} unexpected, {self.registers.unknown} unknown",
            f"data types: {self.datatypes.counters} increments, {self.datatypes.elements} set adds and removes, "
            f"{len(self.datatypes.lost)} lost, {len(self.datatypes.unexpected)} unexpected",
            *(f"data type: {p}" for p in (self.datatypes.lost + self.datatypes.unexpected)[:10]),
            *self._index_lines(),
            f"write availability during faults: {availability:.1%} "
            f"({self.acked_during_faults}/{self.writes_during_faults})",
            f"converged {self.converged_s:.1f} s after healing" if self.converged_s is not None else "did not converge",
            "faults: " + "; ".join(self.faults),
        ]
        lines += [f"problem: {p}" for p in self.problems]
        return "\n".join(lines)

    def _index_lines(self) -> list[str]:
        v = self.indexes
        if v is None:
            return []
        head = (
            f"indexes: {v.writes} objects written, {v.acknowledged} acknowledged, {v.deleted} deleted; "
            f"{v.queries} queries, "
            f"{v.queries_ok} answered in full; {len(v.lost)} lost, {len(v.duplicated)} duplicated, "
            f"{len(v.unexpected)} unexpected, {len(v.failed_final)} final queries failed"
        )
        return [head, *(f"index: {p}" for p in (v.lost + v.duplicated + v.unexpected + v.failed_final)[:10])]


class Workload:
    def __init__(self, cluster: LocalCluster, clients: int, seed: int, index_share: float = 0.0) -> None:
        self.cluster = cluster
        # The key of the contexts the nodes hand out (derived from the cluster's secret), to read their dots.
        assert cluster.secret is not None, "the fault suite's clusters share a secret"
        self.context_key = derive(cluster.secret.encode(), CONTEXT)
        self.rng = random.Random(seed)
        self.set_ops: list[SetOp] = []
        self.writes: list[RegisterWrite] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.faulty = threading.Event()
        self.during = [0, 0]
        self.next_element = 0
        self.set_keys = [f"s{i}" for i in range(3)]
        self.reg_keys = [f"r{i}" for i in range(6)]
        self.counter_keys = [f"k{i}" for i in range(2)]
        self.dt_set_keys = [f"t{i}" for i in range(2)]
        self.counter_ops: list[CounterOp] = []
        self.element_ops: list[ElementOp] = []
        # The fraction of operations that are index writes and queries.
        self.index_share = index_share
        self.index_writes: list[IndexWrite] = []
        self.index_queries: list[IndexQuery] = []
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=CLIENT_TIMEOUT_S * 3)

    def _node(self, rng: random.Random) -> NodeProc:
        return rng.choice(self.cluster.nodes)

    def _record_write(self, outcome: str) -> None:
        if self.faulty.is_set():
            with self.lock:
                self.during[0] += 1
                self.during[1] += outcome == OK

    def _client(self, index: int) -> None:
        rng = random.Random(self.rng.random() + index)
        counter = 0
        while not self.stop.is_set():
            node = self._node(rng)
            kind = rng.random()
            if rng.random() < self.index_share:
                self._index_op(node, rng)
            elif kind >= 0.7:
                self._datatype_op(node, rng, (kind - 0.7) / 0.3)
            elif kind < 0.35:
                with self.lock:
                    self.next_element += 1
                    element = self.next_element
                op = SetOp(rng.choice(self.set_keys), element)
                op.outcome = self._set_add(node, op)
                with self.lock:
                    self.set_ops.append(op)
            else:
                counter += 1
                write = RegisterWrite(rng.choice(self.reg_keys), f"c{index}-{counter}".encode(), Context())
                write.outcome = self._register_write(node, write)
                with self.lock:
                    self.writes.append(write)
            time.sleep(rng.uniform(0.01, 0.05))

    def _index_op(self, node: NodeProc, rng: random.Random) -> None:
        """A write of a new indexed object, a delete of one, or a query: an exact one on some object's
        own term, a range of id_int, or the shared term, each followed page by page."""
        kind = rng.random()
        with self.lock:
            written = len(self.index_writes)
        if kind < 0.55 or written == 0:
            self._index_write(node)
            return
        n = rng.randrange(written)
        if kind < 0.62:
            self._index_delete(node, self.index_writes[n])
            return
        if kind < 0.75:
            query = IndexQuery("id_int", n, n) if rng.random() < 0.5 else IndexQuery("name_bin", f"i{n}", f"i{n}")
        elif kind < 0.9:
            query = IndexQuery("id_int", n, n + rng.randint(1, 100))
        else:
            query = IndexQuery("grp_bin", SHARED_TERM, SHARED_TERM)
        index_query(node, query, INDEX_PAGE_RESULTS, INDEX_QUERY_PAGES_MAX, stop=self.stop)
        with self.lock:
            self.index_queries.append(query)

    def _index_write(self, node: NodeProc) -> None:
        with self.lock:
            n = len(self.index_writes)
            write = IndexWrite(f"i{n}", (("id_int", n), ("name_bin", f"i{n}"), ("grp_bin", SHARED_TERM)))
            # Recorded before it is sent: a query may see the key before the write is acknowledged.
            self.index_writes.append(write)
        headers = {"Content-Type": "text/plain", **{f"X-Riak-Index-{name}": str(term) for name, term in write.entries}}
        try:
            status, _, _ = _call("PUT", obj(node.url, INDEX_BUCKET, write.key), b"v", headers, CLIENT_TIMEOUT_S)
        except OSError:
            status = 0
        write.outcome = OK if status == 204 else FAIL if status == 400 else UNKNOWN
        self._record_write(write.outcome)

    def _index_delete(self, node: NodeProc, write: IndexWrite) -> None:
        """Delete an acknowledged object with the context of a read that showed it (so the delete
        covers the key's one write); at most one delete per object."""
        with self.lock:
            if write.outcome != OK or write.deleted is not None:
                return
            write.deleted = UNKNOWN
        got = self._get(node, INDEX_BUCKET, write.key)
        vclock = got[1].get("X-Riak-Vclock") if got is not None and got[0] == 200 else None
        if vclock is None:
            write.deleted = None  # nothing was sent: no delete of it was tried
            return
        try:
            url = obj(node.url, INDEX_BUCKET, write.key)
            status, _, _ = _call("DELETE", url, headers={"X-Riak-Vclock": vclock}, timeout_s=CLIENT_TIMEOUT_S)
        except OSError:
            status = 0
        write.deleted = OK if status == 204 else FAIL if status == 400 else UNKNOWN
        self._record_write(write.deleted)

    def _datatype_op(self, node: NodeProc, rng: random.Random, kind: float) -> None:
        """A counter increment, a set add, or a read of a set and a remove of one element it showed."""
        if kind < 0.45:
            op = CounterOp(rng.choice(self.counter_keys), rng.randint(1, 5))
            op.outcome = self._dt_update(node, COUNTER_TYPE, op.key, {"increment": op.amount})
            with self.lock:
                self.counter_ops.append(op)
            return
        if kind < 0.85:
            with self.lock:
                self.next_element += 1
                element = f"e{self.next_element}"
            add = ElementOp(rng.choice(self.dt_set_keys), element)
            add.outcome = self._dt_update(node, SET_TYPE, add.key, {"add": element})
            with self.lock:
                self.element_ops.append(add)
            return
        key = rng.choice(self.dt_set_keys)
        try:
            status, _, body = _call("GET", dt_url(node.url, SET_TYPE, key), timeout_s=CLIENT_TIMEOUT_S)
        except OSError:
            return
        if status != 200:
            return
        found = json.loads(body)
        if not found["value"]:
            return
        remove = ElementOp(key, rng.choice(found["value"]), remove=True)
        remove.outcome = self._dt_update(node, SET_TYPE, key, {"remove": remove.element, "context": found["context"]})
        with self.lock:
            self.element_ops.append(remove)

    def _dt_update(self, node: NodeProc, type_name: str, key: str, op: dict[str, Any]) -> str:
        try:
            status, _, _ = _call(
                "POST",
                dt_url(node.url, type_name, key),
                json.dumps(op).encode(),
                {"Content-Type": "application/json"},
                timeout_s=CLIENT_TIMEOUT_S,
            )
        except OSError:
            self._record_write(UNKNOWN)
            return UNKNOWN
        # 400 and 412 change nothing; a 503 may come after the operation was applied somewhere.
        outcome = OK if status == 204 else FAIL if status in (400, 412) else UNKNOWN
        self._record_write(outcome)
        return outcome

    def _get(self, node: NodeProc, bucket: str, key: str) -> tuple[int, dict[str, str], bytes] | None:
        try:
            return _call(
                "GET", obj(node.url, bucket, key), headers={"Accept": "multipart/mixed"}, timeout_s=CLIENT_TIMEOUT_S
            )
        except OSError:
            return None

    def _put(self, node: NodeProc, bucket: str, key: str, body: bytes, vclock: str | None) -> tuple[str, Dot | None]:
        """Write, and say how it ended and (when acknowledged) the dot the write got."""
        headers = {"Content-Type": "application/octet-stream"}
        if vclock:
            headers["X-Riak-Vclock"] = vclock
        try:
            url = obj(node.url, bucket, key)
            status, resp_headers, _ = _call("PUT", url, body, headers, timeout_s=CLIENT_TIMEOUT_S)
        except OSError:
            self._record_write(UNKNOWN)
            return UNKNOWN, None
        outcome = OK if status == 204 else FAIL if status == 400 else UNKNOWN
        self._record_write(outcome)
        # The context of a write's answer is what the write replaced plus the write's own dot.
        answer = resp_headers.get("X-Riak-Vclock") if outcome == OK else None
        dots = parse_context(answer, bucket, key, self.context_key).dots if answer else frozenset()
        return outcome, next(iter(dots)) if len(dots) == 1 else None

    def _set_add(self, node: NodeProc, op: SetOp) -> str:
        got = self._get(node, "sets", op.set_key)
        if got is None or got[0] not in (200, 300, 404):
            return FAIL
        status, headers, body = got
        elements = set(_set_values(status, headers, body))
        elements.add(op.element)
        op.stored = frozenset(elements)
        outcome, op.dot = self._put(
            node, "sets", op.set_key, msgpack.packb(sorted(elements)), headers.get("X-Riak-Vclock")
        )
        return outcome

    def _register_write(self, node: NodeProc, write: RegisterWrite) -> str:
        got = self._get(node, "registers", write.key)
        if got is None or got[0] not in (200, 300, 404):
            return FAIL
        vclock = got[1].get("X-Riak-Vclock")
        write.given = parse_context(vclock, "registers", write.key, self.context_key)
        outcome, write.dot = self._put(node, "registers", write.key, write.value, vclock)
        return outcome


def index_query(
    node: NodeProc,
    query: IndexQuery,
    page: int,
    pages_max: int,
    *,
    stop: threading.Event | None = None,
    timeout_ms: int | None = None,
) -> None:
    """Run `query` at `node`, page by page (`page` results each, at most `pages_max` pages, none once
    `stop` is set), recording the keys of every page and whether the last one came (ok) or some page
    did not (fail). `timeout_ms`: each page's timeout at the node (else its request timeout)."""
    query.where = node.name
    terms = [query.low] if query.low == query.high else [query.low, query.high]
    path = f"{node.url}/buckets/{INDEX_BUCKET}/index/{query.index}/" + "/".join(quote(str(t), safe="") for t in terms)
    params = f"?max_results={page}" + (f"&timeout={timeout_ms}" if timeout_ms is not None else "")
    timeout_s = CLIENT_TIMEOUT_S + (timeout_ms or 0) / 1000
    continuation: str | None = None
    query.outcome = FAIL
    for _ in range(pages_max):
        if stop is not None and stop.is_set():
            return
        url = path + params + (f"&continuation={quote(continuation, safe='')}" if continuation else "")
        try:
            status, _, body = _call("GET", url, timeout_s=timeout_s)
        except OSError:
            return
        if status != 200:
            return
        answer = json.loads(body)
        query.keys += answer["keys"]
        continuation = answer.get("continuation")
        if not continuation:
            query.outcome = OK
            return


# A final query is tried this often before it counts as failed, each page with this timeout: a page
# that times out on a busy machine says nothing about the index (every attempt is still checked for
# keys twice or never written).
FINAL_QUERY_ATTEMPTS, FINAL_QUERY_TIMEOUT_MS = 3, 10_000


def final_index_queries(cluster: LocalCluster, workload: Workload) -> list[IndexQuery]:
    """After convergence: an exact query on each written object's own term (coordinators in turn), and
    from every node the shared term and the whole id_int range, page by page (bounded by the count
    of objects written)."""
    writes = list(workload.index_writes)
    if not writes:
        return []
    nodes = cluster.nodes
    planned: list[tuple[NodeProc, IndexQuery, int]] = []
    for n, write in enumerate(writes):
        own = IndexQuery("id_int", n, n) if n % 2 else IndexQuery("name_bin", write.key, write.key)
        planned.append((nodes[n % len(nodes)], own, 10))
    for node in nodes:
        planned.append((node, IndexQuery("grp_bin", SHARED_TERM, SHARED_TERM), 25))
        planned.append((node, IndexQuery("id_int", 0, len(writes)), 40))
    pages_max = len(writes) // 10 + 2

    def attempts(item: tuple[NodeProc, IndexQuery, int]) -> list[IndexQuery]:
        node, query, page = item
        tried: list[IndexQuery] = []
        for attempt in range(FINAL_QUERY_ATTEMPTS):
            last = attempt == FINAL_QUERY_ATTEMPTS - 1
            one = IndexQuery(query.index, query.low, query.high)
            index_query(node, one, page, pages_max, timeout_ms=FINAL_QUERY_TIMEOUT_MS)
            tried.append(one)
            if one.outcome == OK or last:
                one.final = True
                break
        return tried

    with ThreadPoolExecutor(4) as pool:
        return [query for tried in pool.map(attempts, planned) for query in tried]


def dt_url(base: str, type_name: str, key: str, query: str = "") -> str:
    return f"{base}/types/{type_name}/buckets/b/datatypes/{key}" + (f"?{query}" if query else "")


def create_datatype_types(cluster: LocalCluster) -> None:
    """The workload's bucket types, created and activated as an operator (with a proof of the secret),
    then waited for on every node."""
    from dynastore.localcluster import secret_proof

    assert cluster.secret is not None
    url = cluster[0].url
    for name, datatype in ((COUNTER_TYPE, "counter"), (SET_TYPE, "set")):
        for target, body in (
            (f"/admin/bucket-types/{name}", json.dumps({"props": {"datatype": datatype}}).encode()),
            (f"/admin/bucket-types/{name}/activate", b""),
        ):
            headers = {"Content-Type": "application/json", **secret_proof(url, "POST", target, body, cluster.secret)}
            status, _, answer = call("POST", url + target, body, headers, timeout_s=10)
            assert status == 200, f"{target}: {status} {answer!r}"

    def known_everywhere() -> bool:
        for node in cluster.nodes:
            for name in (COUNTER_TYPE, SET_TYPE):
                status, _, body = _call("GET", f"{node.url}/types/{name}/props", timeout_s=5)
                if status != 200 or not json.loads(body)["props"].get("active"):
                    return False
        return True

    cluster.wait(known_everywhere, 30, "the data-type bucket types on every node")


def _final_datatypes(node: NodeProc, workload: Workload) -> tuple[dict[str, int], dict[str, set[str]]]:
    counters: dict[str, int] = {}
    sets: dict[str, set[str]] = {}
    for type_name, names in ((COUNTER_TYPE, workload.counter_keys), (SET_TYPE, workload.dt_set_keys)):
        for key in names:
            status, _, body = _call("GET", dt_url(node.url, type_name, key, "r=all"), timeout_s=10)
            value = json.loads(body)["value"] if status == 200 else None
            if type_name == COUNTER_TYPE:
                counters[key] = value or 0
            else:
                sets[key] = set(value or [])
    return counters, sets


def _set_values(status: int, headers: dict[str, str], body: bytes) -> list[int]:
    if status == 200:
        return list(msgpack.unpackb(body))
    if status == 300:
        from dynastore.client.http import parse_multipart

        out: list[int] = []
        for value in parse_multipart(body, headers.get("Content-Type", "")):
            out.extend(msgpack.unpackb(value.data))
        return out
    return []


def _final_siblings(node: NodeProc, bucket: str, key: str) -> tuple[int, dict[str, str], bytes]:
    return _call("GET", obj(node.url, bucket, key, "r=all"), headers={"Accept": "multipart/mixed"}, timeout_s=10)


class Nemesis:
    def __init__(self, net: localnet.PrivateNet, cluster: LocalCluster, rng: random.Random) -> None:
        self.net = net
        self.cluster = cluster
        self.rng = rng
        self.log: list[str] = []

    def schedule(self) -> list[str]:
        kinds = ["isolate", "halves", "bridge", "kill", "stop", "skew"]
        self.rng.shuffle(kinds)
        return kinds

    def apply(self, kind: str) -> None:
        n = len(self.cluster.nodes)
        victim = self.rng.randrange(n)
        if kind == "isolate":
            self.net.isolate(victim)
            self.log.append(f"isolated node{victim}")
        elif kind == "halves":
            order = list(range(n))
            self.rng.shuffle(order)
            self.net.partition(order[: n // 2], order[n // 2 :])
            self.log.append(f"partitioned {sorted(order[: n // 2])} | {sorted(order[n // 2 :])}")
        elif kind == "bridge":
            order = list(range(n))
            self.rng.shuffle(order)
            bridge, rest = order[0], order[1:]
            self.net.partition(rest[: len(rest) // 2], rest[len(rest) // 2 :])
            self.log.append(
                f"bridge node{bridge} between {sorted(rest[: len(rest) // 2])} and {sorted(rest[len(rest) // 2 :])}"
            )
        elif kind == "kill":
            self.cluster[victim].kill()
            self.log.append(f"SIGKILLed node{victim}")
        elif kind == "stop":
            self.cluster[victim].signal(signal.SIGSTOP)
            self.log.append(f"SIGSTOPped node{victim}")
        else:
            node = self.cluster[victim]
            node.stop()
            skew = self.rng.choice([-90, -30, 30, 90])
            node.wrapper = ("faketime", "-f", f"{skew:+d}s")
            node.start()
            self.log.append(f"restarted node{victim} with its clock {skew:+d} s off (faketime)")

    def heal(self) -> None:
        self.net.heal()
        for node in self.cluster.nodes:
            node.signal(signal.SIGCONT)
            if not node.alive:
                node.start()


def converged(cluster: LocalCluster, keys_by_bucket: dict[str, list[str]]) -> list[str]:
    problems = []
    for node in cluster.nodes:
        stats = cluster.stats(node)
        if stats["hints_pending"]:
            problems.append(f"{node.name} holds {stats['hints_pending']} hints")
    roots: dict[str, set[Any]] = {}
    for node in cluster.nodes:
        status, _, body = _call("GET", f"{node.url}/admin/aae", timeout_s=5)
        for tree, info in json.loads(body)["trees"].items():
            if info["primary"]:
                roots.setdefault(tree, set()).add(info["root"])
    problems += [f"Merkle roots of {tree} differ" for tree, found in roots.items() if len(found) > 1]
    for bucket, names in keys_by_bucket.items():
        for key in names:
            status, _, body = _call("GET", obj(cluster[0].url, bucket, key) + "/preflist", timeout_s=5)
            replicas = [e["node"] for e in json.loads(body)["preflist"] if e["primary"]]
            summaries = set()
            for name in replicas:
                node = next(n for n in cluster.nodes if n.name == name)
                status, _, body = _call("GET", f"{node.url}/admin/local/{bucket}/{key}", timeout_s=5)
                summaries.add(json.loads(body)["summary"] if status == 200 else None)
            if len(summaries) > 1:
                problems.append(f"replicas of {bucket}/{key} differ")
    return problems


def stored_copies(cluster: LocalCluster, keys_by_bucket: dict[str, list[str]], ring_size: int) -> Copies:
    """Every stopped node's copies of the workload keys (data and hints), read from its data directory."""
    owners = [node.name for node in cluster.nodes]
    out: dict[str, dict[str, list[objects.Object]]] = {}
    for node in cluster.nodes:
        engine = LmdbEngine(node.data_dir / "store", durable=False)
        try:
            by_key: dict[str, list[objects.Object]] = {}
            for bucket, names in keys_by_bucket.items():
                for key in names:
                    b, k = bucket.encode(), key.encode()
                    skey = keys.encode(key_partition(b, k, ring_size), b, k)
                    stored = [engine.get("data", skey)]
                    stored += [engine.get("hints", hints.hint_key(owner, skey)) for owner in owners]
                    by_key[key] = [objects.decode_stored(raw) for raw in stored if raw is not None]
            out[node.name] = by_key
        finally:
            engine.close()
    return out


def run(
    net: localnet.PrivateNet,
    cluster: LocalCluster,
    *,
    seed: int,
    fault_s: float,
    faults: int,
    clients: int = 6,
    converge_bound_s: float = 90.0,
    auth: dict[str, str] | None = None,
    index_share: float = 0.0,
) -> Report:
    """One run; `auth`: headers (HTTP Basic) that every request carries, for a cluster with security on;
    `index_share`: the fraction of operations that are
    index writes and queries (with any, the report carries the index checker's verdict)."""
    _AUTH.clear()
    _AUTH.update(auth or {})
    try:
        return _run(
            net,
            cluster,
            seed=seed,
            fault_s=fault_s,
            faults=faults,
            clients=clients,
            bound_s=converge_bound_s,
            index_share=index_share,
        )
    finally:
        _AUTH.clear()


def _run(
    net: localnet.PrivateNet,
    cluster: LocalCluster,
    *,
    seed: int,
    fault_s: float,
    faults: int,
    clients: int,
    bound_s: float,
    index_share: float,
) -> Report:
    rng = random.Random(seed)
    create_datatype_types(cluster)
    workload = Workload(cluster, clients, seed, index_share)
    nemesis = Nemesis(net, cluster, rng)
    workload.start()
    try:
        time.sleep(2.0)  # some history before the first fault
        for kind in nemesis.schedule()[:faults]:
            workload.faulty.set()
            nemesis.apply(kind)
            time.sleep(fault_s)
            nemesis.heal()
            workload.faulty.clear()
            cluster.wait(lambda: all(n.alive for n in cluster.nodes), 30, "restarted nodes")
            time.sleep(1.0)
    finally:
        nemesis.heal()
        workload.join()
    healed = time.monotonic()
    # A client still running would add to the history while it is checked: the run says so instead.
    stuck = [f"client {t.name} still running after the workload stopped" for t in workload.threads if t.is_alive()]
    keys_by_bucket = {"sets": workload.set_keys, "registers": workload.reg_keys}
    problems: list[str] = []
    converged_s = None
    deadline = healed + bound_s
    while time.monotonic() < deadline:
        try:
            problems = converged(cluster, keys_by_bucket)
        except (OSError, ValueError, KeyError) as exc:
            problems = [f"cluster not answering: {exc}"]
        if not problems:
            converged_s = time.monotonic() - healed
            break
        time.sleep(0.5)
    final_sets: dict[str, set[int]] = {}
    for key in workload.set_keys:
        status, headers, body = _final_siblings(cluster[0], "sets", key)
        final_sets[key] = set(_set_values(status, headers, body))
    final_regs: dict[str, list[tuple[Dot, bytes]]] = {}
    for key in workload.reg_keys:
        status, headers, body = _final_siblings(cluster[0], "registers", key)
        final_regs[key] = _register_siblings(cluster, key, status, headers, body)
    final_counters, final_dt_sets = _final_datatypes(cluster[0], workload)
    index_verdict = None
    if index_share:
        final = final_index_queries(cluster, workload)
        index_verdict = check_indexes(workload.index_writes, workload.index_queries + final)
    ring_size = int(json.loads(_call("GET", f"{cluster[0].url}/ring", timeout_s=5)[2])["ring_size"])
    for node in cluster.nodes:
        node.stop()
    copies = stored_copies(cluster, keys_by_bucket, ring_size)
    stored_problems = check_copies(workload.set_ops, workload.writes, copies, STORE_W, msgpack.unpackb)
    return Report(
        check_sets(workload.set_ops, final_sets),
        check_registers(workload.writes, final_regs),
        check_datatypes(workload.counter_ops, workload.element_ops, final_counters, final_dt_sets),
        workload.during[0],
        workload.during[1],
        converged_s,
        index_verdict,
        (problems if converged_s is None else []) + stuck + [f"stored: {p}" for p in stored_problems[:10]],
        nemesis.log,
    )


def _register_siblings(
    cluster: LocalCluster, key: str, status: int, headers: dict[str, str], body: bytes
) -> list[tuple[Dot, bytes]]:
    """The final siblings with their dots, read from a replica's own copy (dots are not in HTTP)."""
    if status == 404:
        return []
    values = {v.data for v in _values(status, headers, body)}
    _, _, plist = _call("GET", obj(cluster[0].url, "registers", key) + "/preflist", timeout_s=5)
    replica = json.loads(plist)["preflist"][0]["node"]
    host = next(n for n in cluster.nodes if n.name == replica)
    status, _, raw = _call("GET", f"{host.url}/admin/local/registers/{key}", timeout_s=5)
    if status != 200:
        return []
    out = []
    for sibling in json.loads(raw)["siblings"]:
        if not sibling["deleted"] and sibling["value"].encode() in values:
            actor, counter = sibling["dot"]
            out.append((Dot(actor.encode(), counter), sibling["value"].encode()))
    return out


def _values(status: int, headers: dict[str, str], body: bytes) -> list[Any]:
    from dynastore.client.http import Value, parse_multipart

    if status == 200:
        return [Value(body)]
    if status == 300:
        return list(parse_multipart(body, headers.get("Content-Type", "")))
    return []
