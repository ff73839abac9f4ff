"""Cluster administration over HTTP (`/admin/...`), used by `dynastore cluster ...` and by tests.

Not part of Riak's API. Every route validates its input like the rest of the API: a 4xx with a
plain-text reason for anything malformed. What the routes report is computed by the core
(`admin_status`, `aae_trees`, `aae_partitions`, `cluster_plan`, `local_copy`); this module only routes
and renders.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

from dynastore import __version__, backup
from dynastore.api.answers import Answer, BadRequest, failure, json_response, text
from dynastore.api.auth import Guard
from dynastore.api.server import Request, StreamResponse
from dynastore.backup import BackupError
from dynastore.core import buckettypes, clusterplan, indexes, keys, membership, merkle, objects, security
from dynastore.core.effects import SecurityAction
from dynastore.core.messages import PROTOCOL_VERSION, ClientBucketType, Failure, NotFound
from dynastore.core.node import (
    ClientJoin,
    ClientLeave,
    ClientRemove,
    ClientRepair,
    ClientReplace,
    ClientStaged,
    SecurityChange,
)
from dynastore.runtime.node import NodeRuntime
from dynastore.storage.base import NoSpaceError, StorageError
from dynastore.storage.directory import disk_free_bytes
from dynastore.storage.lmdb_layout import LAYOUT_VERSION

log = logging.getLogger("dynastore.backup")


async def handle(runtime: NodeRuntime, guard: Guard, request: Request, rest: list[bytes]) -> Answer:
    core = runtime.core
    assert core is not None
    method = request.method
    if rest == [b"challenge"] and method == "GET":
        # A nonce for one proof with the cluster secret (auth.proof), good for a minute.
        return json_response({"nonce": guard.challenge().hex()})
    if rest[:1] == [b"security"]:
        return await _security(runtime, request, rest[1:])
    if rest[:1] == [b"bucket-types"]:
        return await _bucket_types(runtime, request, rest[1:])
    if rest == [b"status"] and method == "GET":
        return json_response(core.admin_status(runtime.clock.now_ms()))
    if len(rest) == 3 and rest[0] == b"local" and method == "GET":
        # This node's own copy of a key, without any quorum.
        bucket, key = rest[1], rest[2]
        problem = keys.name_problem(runtime.settings, bucket, key)
        if buckettypes.is_typed(bucket):
            problem = "a bucket name may not start with a NUL byte"
        if problem is not None:
            raise BadRequest(problem)
        obj = core.local_copy(bucket, key)
        if obj is None:
            return text(404, "no local copy")
        return json_response(
            {
                "summary": merkle.summary(obj).hex(),
                "clock": [[a.decode(errors="replace"), c] for a, c, _ in obj.clock.entries],
                "siblings": [
                    {
                        "vtag": objects.vtag(dot),
                        "dot": [dot.actor.decode(errors="replace"), dot.counter],
                        "value": content.value.decode(errors="replace"),
                        "deleted": content.deleted,
                        "content_type": content.content_type,
                    }
                    for dot, content in obj.siblings
                ],
            }
        )
    if rest == [b"backup"] and method == "GET":
        return await _backup(runtime, request)
    if rest == [b"aae"] and method == "GET":
        return json_response(
            {
                "node": core.name,
                "now_ms": runtime.clock.now_ms(),
                "trees": core.aae_trees(),
                "partitions": core.aae_partitions(),
            }
        )
    if rest == [b"repair"] and method == "POST":
        return await _repair(runtime, request)
    if rest == [b"plan"] and method == "GET":
        return _plan(runtime)
    if rest in ([b"commit"], [b"clear"]) and method == "POST":
        planned = request.query.get("plan", "")
        if len(planned) > 64:
            raise BadRequest("plan must be the plan_id `cluster plan --json` shows")
        response = await runtime.request(ClientStaged("commit" if rest == [b"commit"] else "clear", planned))
        if isinstance(response, Failure):
            return failure(response)
        return json_response({"done": rest[0].decode(), "ring_version": core.cluster.ring.version})
    if rest == [b"replace"] and method == "POST":
        old, new = request.query.get("old", ""), request.query.get("new", "")
        if not old or not new:
            raise BadRequest("replace needs ?old=NAME&new=NAME")
        response = await runtime.request(ClientReplace(old, new))
        if isinstance(response, Failure):
            return failure(response)
        return json_response({"staged": "replace", "old": old, "new": new})
    if rest == [b"join"] and method == "POST":
        seed = request.query.get("seed", "")
        host, _, port = seed.rpartition(":")
        if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise BadRequest("seed must be host:peer-port")
        stage = _stage_flag(request)
        response = await runtime.request(ClientJoin(host, int(port), stage))
        if isinstance(response, Failure):
            return failure(response)
        return json_response({"joined": seed, "staged": stage})
    if rest == [b"leave"] and method == "POST":
        stage = _stage_flag(request)
        response = await runtime.request(ClientLeave(stage))
        if isinstance(response, Failure):
            return failure(response)
        return json_response({"leaving": core.name, "staged": stage})
    if rest == [b"remove"] and method == "POST":
        name = request.query.get("node", "")
        if not name:
            raise BadRequest("remove needs ?node=NAME")
        stage = _stage_flag(request)
        response = await runtime.request(ClientRemove(name, stage))
        if isinstance(response, Failure):
            return failure(response)
        return json_response({"removed": name, "staged": stage})
    return text(404, "Not Found")


async def _backup(runtime: NodeRuntime, request: Request) -> Answer:
    """A consistent copy of this node's store, streamed as backup.py describes (`dynastore backup`).
    The copy is made in the node's own data directory, off the event loop, and removed afterwards."""
    engine = runtime.engine
    assert engine is not None
    refusal = backup.refusal_of(engine)
    if refusal is not None:
        return text(409, refusal)
    if runtime.backup_running:
        return text(409, "a backup of this node is already running; try again once it has finished")
    runtime.backup_running = True
    directory = runtime.config.data_dir / backup.TEMP_DIR_NAME
    try:
        # The actor and metadata as the copy starts (the epoch never changes while a node runs).
        manifest = _manifest_head(runtime)
        problem = backup.head_problem(manifest, manifest["engine"])
        if problem is not None:
            return text(500, f"this node's backup cannot be made: {problem} (too many members, types or users)")
        # The copy goes on the data directory's disk and is about as large as the store: refused up
        # front, having changed nothing, when it would eat into the reserve the node's writes keep.
        try:
            space = await asyncio.to_thread(engine.space)
            free = await asyncio.to_thread(disk_free_bytes, runtime.config.data_dir)
        except (StorageError, OSError) as exc:
            return text(503, f"cannot measure the room for the backup's copy: {exc}")
        if space is not None:
            problem = backup.room_problem(space.used_bytes, free, runtime.settings.storage_reserve_bytes)
            if problem is not None:
                return text(507, problem)
        started = time.monotonic()
        try:
            await asyncio.to_thread(backup.remove_temp, runtime.config.data_dir)
            await asyncio.to_thread(directory.mkdir, 0o700)
            files = await asyncio.to_thread(backup.snapshot, engine, directory)  # type: ignore[arg-type]
        except NoSpaceError as exc:
            return text(507, f"no room for the backup's copy in the node's data directory: {exc}")
        except (StorageError, OSError) as exc:
            log.error("backup copy failed: %s", exc)
            return text(503, f"the backup's copy failed: {exc}")
        manifest["files"] = [entry.as_dict() for entry in files]
        total = sum(entry.size for entry in files)
        log.info("backup: copied %d bytes in %.2f s; streaming", total, time.monotonic() - started)
        try:
            # Encoded before the response starts: a refusal is still a status, not a cut-off 200.
            head = backup.encode_head(manifest)
        except BackupError as exc:
            return text(500, f"this node's backup cannot be made: {exc}")
        stream = StreamResponse(headers={"Content-Type": "application/octet-stream"})
        try:
            await stream.prepare(request)
            await stream.write(head)
            for entry in files:
                with open(directory / entry.name, "rb") as source:
                    while chunk := await asyncio.to_thread(source.read, backup.CHUNK_BYTES):
                        await stream.write(chunk)
            log.info("backup: streamed %d bytes in %.2f s", total, time.monotonic() - started)
        except ConnectionResetError:
            log.warning("backup: the client went away mid-stream")
        except OSError as exc:
            # The stream ends short of what the manifest promises: the CLI refuses it.
            log.error("backup: reading the copy failed mid-stream: %s", exc)
        return stream
    finally:
        await asyncio.to_thread(backup.remove_temp, runtime.config.data_dir)
        runtime.backup_running = False


def _manifest_head(runtime: NodeRuntime) -> dict[str, Any]:
    """Everything of the manifest but its files: who, what, when, and the cluster metadata. Users are
    listed with their grants but not their password hashes (the copy holds those, for the restore)."""
    core, engine = runtime.core, runtime.engine
    assert core is not None and engine is not None
    state = core.cluster
    kind = backup.engine_kind(engine)
    formats: dict[str, int] = {
        "cluster_state": membership.STATE_FORMAT,
        "object": objects.FORMAT_VERSION,
        "merkle_summary": merkle.SUMMARY_VERSION,
        "secondary_index": indexes.INDEX_FORMAT,
        "peer_protocol": PROTOCOL_VERSION,
    }
    if kind == "lmdb":
        formats["lmdb_layout"] = LAYOUT_VERSION
    now_ms = int(time.time() * 1000)
    return {
        "format": backup.BACKUP_FORMAT,
        "format_version": backup.BACKUP_FORMAT_VERSION,
        "dynastore_version": __version__,
        "node": core.name,
        "cluster": state.cluster,
        "engine": kind,
        "formats": formats,
        "created_ms": now_ms,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_ms / 1000)),
        "epoch": f"{core.actors.epoch:08x}",
        "generation": core.actors.generation,
        "actor": core.actor.decode(errors="replace"),
        "tombstone_grace_ms": runtime.settings.tombstone_grace_ms,
        "metadata": {
            "ring_version": state.ring.version,
            "ring_size": len(state.ring.owners),
            "members": [
                {
                    "name": m.name,
                    "host": m.host,
                    "peer_port": m.peer_port,
                    "http_port": m.http_port,
                    "status": m.status,
                    "weight": m.weight,
                }
                for m in state.members
            ],
            "bucket_types": [record for n, _ in state.types if (record := _type_record(runtime, n)) is not None],
            "bucket_props": {_bucket_label(name): props.as_dict() for name, props in state.buckets},
            "security_enabled": state.security.on,
            "users": [
                {"name": name, "grants": [{"permission": p, "on": on} for p, on in state.security.grants_of(name)]}
                for name in state.security.user_names()
            ],
        },
    }


def _bucket_label(internal: bytes) -> str:
    """A bucket's name as an operator writes it: BUCKET, or TYPE/BUCKET for a bucket of another type."""
    type_name, bucket = buckettypes.split(internal)
    name = bucket.decode(errors="replace")
    return name if type_name == buckettypes.DEFAULT else f"{type_name}/{name}"


def _stage_flag(request: Request) -> bool:
    value = request.query.get("stage", "false")
    if value not in ("true", "false"):
        raise BadRequest("stage must be true or false")
    return value == "true"


def _plan(runtime: NodeRuntime) -> Answer:
    """`cluster plan`: what committing the staged changes will move (computed as the claimant will)."""
    core = runtime.core
    assert core is not None
    if not clusterplan.pending(core.cluster):
        return json_response({"node": core.name, "ring_version": core.cluster.ring.version, "changes": []})
    try:
        plan = core.cluster_plan()
    except clusterplan.PlanError as exc:
        raise BadRequest(str(exc)) from None
    return json_response(
        {
            "node": core.name,
            "plan_id": plan.plan_id,
            "ring_version": plan.ring_version,
            "changes": [{"node": c.node, "action": c.action, "target": c.target or None} for c in plan.changes],
            "transitions": 1,
            "nodes": [
                {
                    "name": n.name,
                    "status_after": n.status_after,
                    "partitions_now": n.partitions_now,
                    "partitions_after": n.partitions_after,
                    "gains": n.gains,
                    "losses": n.losses,
                }
                for n in plan.nodes
            ],
            "moves": [{"from": a, "to": b, "partitions": count} for a, b, count in plan.moves],
            "partitions_moved": plan.partitions_moved,
            "ring_size": len(plan.owners_now),
            "owners_after": list(plan.owners_after),
            "warnings": list(plan.warnings),
        }
    )


async def _repair(runtime: NodeRuntime, request: Request) -> Answer:
    """`cluster repair PARTITION|--all`: queue anti-entropy exchanges now (they run one at a time)."""
    core = runtime.core
    assert core is not None
    raw, everything = request.query.get("partition"), request.query.get("all") == "true"
    if (raw is None) == (not everything):
        raise BadRequest("repair needs ?partition=P or ?all=true")
    partition = None
    if raw is not None:
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 6:
            raise BadRequest("partition must be a partition number")
        partition = int(raw)
    requested_ms = runtime.clock.now_ms()
    response = await runtime.request(ClientRepair(partition))
    if isinstance(response, Failure):
        return failure(response)
    held = sorted(int(p) for p in core.aae_partitions())
    partitions = held if partition is None else [partition]
    return json_response({"node": core.name, "partitions": partitions, "requested_at_ms": requested_ms})


async def _security(runtime: NodeRuntime, request: Request, rest: list[bytes]) -> Answer:
    """Users, grants and the security switch (the guard let only operators through)."""
    core = runtime.core
    assert core is not None
    method, query = request.method, request.query
    if not rest and method == "GET":
        state = core.cluster.security
        users = [
            {"name": name, "grants": [{"permission": p, "on": scope} for p, scope in state.grants_of(name)]}
            for name in state.user_names()
        ]
        return json_response({"enabled": state.on, "users": users})
    if method != "POST":
        return text(404, "Not Found")
    change: SecurityChange
    if rest in ([b"enable"], [b"disable"]):
        change = SecurityChange("enable" if rest == [b"enable"] else "disable")
    elif rest == [b"users"]:
        name, password = query.get("name", ""), _password(await request.read())
        salt = os.urandom(security.SALT_BYTES)
        digest = await asyncio.to_thread(security.hash_password, password, salt)
        change = SecurityChange("add_user", name, digest)
    elif rest == [b"users", b"delete"]:
        change = SecurityChange("del_user", query.get("name", ""))
    elif rest in ([b"grant"], [b"revoke"]):
        try:
            perms = tuple(security.parse_permissions(query.get("permissions", "")))
        except security.SecurityError as exc:
            raise BadRequest(str(exc)) from None
        action: SecurityAction = "grant" if rest == [b"grant"] else "revoke"
        change = SecurityChange(action, query.get("user", ""), b"", perms, query.get("on", ""))
    else:
        return text(404, "Not Found")
    response = await runtime.request(change)
    if isinstance(response, Failure):
        return failure(response)
    return json_response({"done": change.action, "user": change.user})


def _type_record(runtime: NodeRuntime, name: str) -> dict[str, Any] | None:
    core = runtime.core
    assert core is not None
    if name == buckettypes.DEFAULT:
        record = core.cluster.bucket_type(name)
        return {"name": name, "active": True, "props": {} if record is None else record.as_dict()}
    record = core.cluster.bucket_type(name)
    if record is None:
        return None
    return {"name": name, "active": record.active, "props": record.as_dict()}


async def _bucket_types(runtime: NodeRuntime, request: Request, rest: list[bytes]) -> Answer:
    """`dynastore bucket-type ...`: list, status, create, activate, update (operators only). A type's
    properties here are the ones it sets; `/types/T/props` shows them over the defaults."""
    core = runtime.core
    assert core is not None
    method = request.method
    if not rest:
        if method != "GET":
            return text(405, "Method Not Allowed", {"Allow": "GET"})
        names = [buckettypes.DEFAULT] + [n for n, _ in core.cluster.types if n != buckettypes.DEFAULT]
        return json_response({"types": [_type_record(runtime, n) for n in names]})
    name = rest[0].decode("utf-8", "replace")
    problem = buckettypes.name_problem(name)
    if problem is not None:
        raise BadRequest(problem)
    if len(rest) == 1 and method == "GET":
        found = _type_record(runtime, name)
        if found is None:
            return text(404, f"unknown bucket type {name!r}")
        return json_response(found)
    request_: ClientBucketType
    if len(rest) == 1 and method in ("POST", "PUT"):
        props = _type_props(await request.read())
        request_ = ClientBucketType("create" if method == "POST" else "update", name, props)
    elif rest[1:] == [b"activate"] and method == "POST":
        request_ = ClientBucketType("activate", name)
    else:
        return text(404, "Not Found")
    response = await runtime.request(request_)
    if isinstance(response, NotFound):
        return text(404, f"unknown bucket type {name!r}")
    if isinstance(response, Failure):
        return failure(response)
    return json_response(_type_record(runtime, name))


def _type_props(body: bytes) -> tuple[tuple[str, Any], ...]:
    shape = 'body must be JSON of the form {"props": {...}}'
    try:
        data = json.loads(body.decode("utf-8")) if body.strip() else {"props": {}}
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest(shape) from None
    if not isinstance(data, dict) or not isinstance(data.get("props", {}), dict):
        raise BadRequest(shape)
    props: dict[str, Any] = data.get("props", {})
    return tuple(sorted(props.items()))


def _password(body: bytes) -> str:
    try:
        data = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        data = None
    password = data.get("password") if isinstance(data, dict) else None
    if not isinstance(password, str) or not password:
        raise BadRequest('body must be JSON of the form {"password": "..."}')
    if len(password.encode()) > security.PASSWORD_BYTES_MAX:
        raise BadRequest(f"a password is at most {security.PASSWORD_BYTES_MAX} bytes")
    return password
