"""The `dynastore` command: run nodes, a local cluster, cluster administration, data commands, benchmarks.

Every command has --help; an error is one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from dynastore.settings import Settings, SettingsError, load_file

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str) -> None:
    click.echo(f"dynastore: {message}", err=True)
    sys.exit(1)


def _settings(config: str | None, overrides: tuple[str, ...]) -> Settings:
    """Settings from the config file and --set overrides; a secret may come from `cluster_secret_file`
    or the DYNASTORE_CLUSTER_SECRET environment variable, so that it need not be on a command line."""
    from dynastore.runtime.secrets import resolve

    try:
        base = load_file(Path(config)) if config else Settings()
        return resolve(base.with_overrides(overrides))
    except SettingsError as exc:
        _fail(str(exc))
        raise AssertionError from exc


def _address(text: str, what: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        _fail(f"{what} must be host:port, got {text!r}")
    return host, int(port)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """dynastore: a highly available, decentralised key-value store (Dynamo design)."""


# --- node ------------------------------------------------------------------------------------------------


@main.command()
@click.option("--name", required=True, help="Node name, unique in the cluster.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on and connect from.")
@click.option("--http-port", type=int, default=8098, show_default=True)
@click.option("--peer-port", type=int, default=9000, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), required=True)
@click.option("--seed", "seeds", multiple=True, help="A member's host:peer-port; a new node joins its cluster.")
@click.option("--weight", type=int, default=1, show_default=True, help="Share of partitions relative to others.")
@click.option("--config", type=click.Path(dir_okay=False, exists=True), help="TOML file of settings.")
@click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE", help="Override a setting.")
@click.option("--log-level", default="info", show_default=True)
def node(
    name: str,
    host: str,
    http_port: int,
    peer_port: int,
    data_dir: str,
    seeds: tuple[str, ...],
    weight: int,
    config: str | None,
    overrides: tuple[str, ...],
    log_level: str,
) -> None:
    """Run one node in the foreground (one per machine on real hosts)."""
    from dynastore.runtime.node import NodeConfig
    from dynastore.runtime.serve import serve

    settings = _settings(config, overrides)
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
    )
    if not 1 <= weight <= 1000:
        _fail("--weight must be from 1 to 1000")
    cfg = NodeConfig(
        name, host, http_port, peer_port, Path(data_dir), tuple(_address(s, "--seed") for s in seeds), weight
    )
    from dynastore.core.nodebase import StartupError
    from dynastore.net.tls import TlsError
    from dynastore.storage.base import StorageError

    try:
        serve(cfg, settings)
    except (OSError, TlsError, StartupError, StorageError) as exc:
        _fail(f"cannot start {name}: {exc}")


# --- up ----------------------------------------------------------------------------------------------------


@main.command()
@click.option("--nodes", type=click.IntRange(1, 64), default=3, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), default="./data", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--http-port", type=int, default=8098, show_default=True)
@click.option("--peer-port", type=int, default=9000, show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE", help="Override a setting on every node.")
@click.option("--ready-timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for `ready`.")
def up(
    nodes: int,
    data_dir: str,
    host: str,
    http_port: int,
    peer_port: int,
    overrides: tuple[str, ...],
    ready_timeout: float,
) -> None:
    """Start a local cluster of NODES processes; Ctrl-C stops them all. Running it again restarts the
    same cluster from its data."""
    from dynastore.localcluster import LocalCluster

    settings = _settings(None, overrides)
    root = Path(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    # Every node shares one secret: the one given (the nodes read it as this command did), else one
    # kept with the data in DATA_DIR/cluster.secret, created with the cluster.
    cluster = LocalCluster(
        root,
        nodes,
        host=host,
        http_port=http_port,
        peer_port=peer_port,
        overrides=overrides,
        make_secret=not settings.cluster_secret,
    )
    try:
        cluster.start()
        for node in cluster.nodes:
            click.echo(f"{node.name}: {node.url}  peer {node.peer_address}  data {node.data_dir}  log {node.log_path}")
        deadline = time.monotonic() + ready_timeout
        ready = False
        reported: set[str] = set()
        while not stopping:
            for node in cluster.nodes:
                if not node.alive and node.name not in reported:
                    reported.add(node.name)
                    code = node.proc.returncode if node.proc else None
                    click.echo(f"{node.name} exited with status {code} (not restarted; see {node.log_path})", err=True)
            if len(reported) == len(cluster.nodes):
                break
            if not ready:
                with contextlib.suppress(OSError, urllib.error.URLError, ValueError, KeyError):
                    ready = cluster.ready()
                if ready:
                    click.echo("ready")
                    sys.stdout.flush()
                elif time.monotonic() > deadline:
                    click.echo(f"cluster not ready after {ready_timeout:.0f} s; see {root}/node-*.log", err=True)
                    deadline = float("inf")
            time.sleep(0.2)
    finally:
        cluster.close()
    sys.exit(0 if stopping else 1)


# --- credentials -----------------------------------------------------------------------------------------------

# What the command authenticates with: set by the options below (or the environment).
_CREDENTIALS: dict[str, str] = {}


def _remember(name: str) -> Callable[[click.Context, click.Parameter, str | None], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value:
            _CREDENTIALS[name] = value

    return callback


def _read_file(name: str) -> Callable[[click.Context, click.Parameter, str | None], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value:
            try:
                _CREDENTIALS[name] = Path(value).read_text().strip()
            except OSError as exc:
                _fail(f"cannot read {value}: {exc}")

    return callback


def CREDENTIAL_OPTIONS(fn: F) -> F:
    """--user/--password[-file] (a user, when security is on) or --secret[-file] (the cluster secret,
    proved to the node without sending it): from a file, the environment or a prompt, so that neither
    need appear on a command line."""
    options = [
        click.option(
            "--user",
            envvar="DYNASTORE_USER",
            expose_value=False,
            callback=_remember("user"),
            help="User to authenticate as (env DYNASTORE_USER).",
        ),
        click.option(
            "--password",
            envvar="DYNASTORE_PASSWORD",
            expose_value=False,
            callback=_remember("password"),
            help="Its password (env DYNASTORE_PASSWORD; prompted for when missing).",
        ),
        click.option(
            "--password-file",
            expose_value=False,
            callback=_read_file("password"),
            type=click.Path(dir_okay=False),
            help="Read the password from this file.",
        ),
        click.option(
            "--secret",
            envvar="DYNASTORE_CLUSTER_SECRET",
            expose_value=False,
            callback=_remember("secret"),
            help="The cluster secret (env DYNASTORE_CLUSTER_SECRET), proved without being sent.",
        ),
        click.option(
            "--secret-file",
            expose_value=False,
            callback=_read_file("secret"),
            type=click.Path(dir_okay=False),
            help="Read the cluster secret from this file.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _user_auth() -> tuple[str, str] | None:
    user = _CREDENTIALS.get("user")
    if not user:
        return None
    password = _CREDENTIALS.get("password")
    if password is None:
        if not sys.stdin.isatty():
            _fail("--user needs a password: --password-file, DYNASTORE_PASSWORD or a terminal to prompt on")
        password = click.prompt(f"password for {user}", hide_input=True, err=True)
        _CREDENTIALS["password"] = password
    return user, password


def _local(host: str) -> bool:
    from dynastore.core.secret import is_loopback

    return is_loopback(host)


def _auth_headers(url: str, method: str, target: str, body: bytes, basic: bool = True) -> dict[str, str]:
    """The headers proving who the command is: a proof with the secret, else Basic credentials (when
    `basic`: a password is only sent where it does not cross a network in clear)."""
    secret_text = _CREDENTIALS.get("secret")
    if secret_text:
        from dynastore.localcluster import secret_proof

        return secret_proof(url, method, target, body, secret_text)
    auth = _user_auth() if basic else None
    if auth is None:
        return {}
    from dynastore.client.http import basic_auth

    return basic_auth(*auth)


# --- cluster -------------------------------------------------------------------------------------------------


@main.group()
def cluster() -> None:
    """Membership (status, ring, join, leave, remove; staged: replace, plan, commit, clear) and
    anti-entropy (repair, aae-status)."""


def _remember_ca(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    # The CA travels in the environment so that every helper that talks to nodes (the HTTP client, the
    # admin calls, LocalCluster's probes) verifies https:// nodes the same way.
    if value:
        os.environ["DYNASTORE_CA"] = value


def _ssl_context() -> Any:
    ca_file = os.environ.get("DYNASTORE_CA")
    if not ca_file:
        return None
    from dynastore.net.tls import http_client_context

    return http_client_context(ca_file)


_URL_OPTION = click.option(
    "--node", "url", default="http://127.0.0.1:8098", show_default=True, help="HTTP address of the node to act on."
)
_CA_OPTION = click.option(
    "--ca",
    envvar="DYNASTORE_CA",
    expose_value=False,
    callback=_remember_ca,
    help="CA file that verifies https:// nodes (env DYNASTORE_CA).",
)


def NODE_OPTION(fn: F) -> F:
    return _URL_OPTION(_CA_OPTION(CREDENTIAL_OPTIONS(fn)))


@cluster.command()
@NODE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.option("--watch/--no-watch", default=None, help="Follow transfers until they finish (default: in a terminal).")
def status(url: str, as_json: bool, watch: bool | None) -> None:
    """Members as this node sees them (status, reachability, phi, partitions) and ring transfers."""
    data = _admin(url, "/admin/status")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(
        f"cluster {data['cluster']}  seen from {data['node']}  ring v{data['ring_version']}  "
        f"claimant {data['claimant']}  hints pending {data['hints_pending']}"
    )
    for m in data["members"]:
        state = "up" if m["reachable"] else "DOWN"
        staged = f"  (staged {m['staged']})" if m.get("staged") else ""
        click.echo(
            f"  {m['name']:<12} {m['status']:<8} {state:<5} phi {m['phi']:<6} "
            f"partitions {m['partitions']:<4} {m['host']}:{m['peer_port']} http {m['http_port']}{staged}"
        )
    aae = data.get("anti_entropy")
    if aae:
        ages = list(aae["last_exchange_age_s"].values())
        oldest = f", oldest exchange {max(ages):.0f} s ago" if ages else ""
        click.echo(
            f"anti-entropy: {aae['exchanges']} exchanges, {aae['keys_repaired']} keys repaired, "
            f"{aae['trees_ready']}/{aae['trees']} trees ready, {aae['tree_builds']} builds{oldest}; "
            f"background {aae['background_rate_per_s']}/s ({aae['background_deferred']} deferred, "
            f"foreground p99 {aae['foreground_p99_ms']:.1f} ms, limit {aae['background_latency_limit_ms']:.0f} ms)"
        )
    transition = data.get("transition")
    if transition is None:
        click.echo("no transfers in progress")
        return
    if watch is None:
        watch = sys.stdout.isatty()
    if not watch:
        _print_transfers(data)
        return
    _watch_transfers(url, data)


def _receiving(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every member's receiving transfers, asked of each member (each knows its own checkpoints)."""
    out: list[tuple[str, dict[str, Any]]] = []
    from dynastore.localcluster import http_json

    for m in data["members"]:
        if m["status"] == "removed" or not m["reachable"]:
            continue
        scheme = "https" if m.get("tls") else "http"
        member_url = f"{scheme}://{m['host']}:{m['http_port']}"
        try:
            # A password never goes to a member in clear on the network (a proof of the secret may).
            headers = _auth_headers(
                member_url, "GET", "/admin/status", b"", basic=scheme == "https" or _local(m["host"])
            )
            theirs = http_json(member_url + "/admin/status", timeout_s=2.0, headers=headers)
        except (OSError, urllib.error.URLError, ValueError):
            continue
        out.extend((m["name"], t) for t in theirs.get("receiving", []))
    return out


def _print_transfers(data: dict[str, Any]) -> None:
    t = data["transition"]
    click.echo(
        f"transfers: {t['partitions_switched']}/{t['partitions_total']} partitions switched, "
        f"{t['transfers_pending']} transfers pending to {', '.join(t['receivers'])}"
    )
    for node, transfer in _receiving(data):
        state = "active" if transfer["active"] else "waiting"
        click.echo(
            f"  {node} <- {', '.join(transfer['sources'])}  partition {transfer['partition']:<5} "
            f"{transfer['keys_received']} keys received ({state})"
        )


def _watch_transfers(url: str, data: dict[str, Any]) -> None:
    from rich.progress import BarColumn, Progress, TextColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}")) as bar:
        t = data["transition"]
        task = bar.add_task("partitions switched", total=t["partitions_total"], completed=t["partitions_switched"])
        keys_task = bar.add_task("keys received", total=None, completed=0)
        while True:
            time.sleep(0.5)
            data = _admin(url, "/admin/status")
            t = data.get("transition")
            if t is None:
                bar.update(task, completed=bar.tasks[0].total)
                break
            received = sum(tr["keys_received"] for _, tr in _receiving(data))
            bar.update(task, completed=t["partitions_switched"])
            bar.update(keys_task, completed=received)
    click.echo("transfers complete")


@cluster.command()
@NODE_OPTION
def ring(url: str) -> None:
    """Partition ownership."""
    data = _admin(url, "/ring")
    click.echo(f"ring v{data['version']}: {data['ring_size']} partitions")
    counts: dict[str, int] = {}
    for owner in data["owners"]:
        counts[owner] = counts.get(owner, 0) + 1
    for name, count in sorted(counts.items()):
        click.echo(f"  {name:<12} {count:>4} partitions ({100 * count / data['ring_size']:.1f}%)")


_STAGE_OPTION = click.option(
    "--stage", is_flag=True, help="Stage the change: `cluster plan` shows it, `cluster commit` applies it."
)


def _stage_param(stage: bool) -> dict[str, str]:
    return {"stage": "true"} if stage else {}


@cluster.command()
@click.argument("seed")
@_STAGE_OPTION
@NODE_OPTION
def join(seed: str, stage: bool, url: str) -> None:
    """Make the node at --node join the cluster that SEED (a member's host:peer-port) belongs to. With
    --stage it becomes a member that is given partitions only when the staged changes are committed."""
    _address(seed, "SEED")
    _admin(url, "/admin/join", method="POST", params={"seed": seed, **_stage_param(stage)})
    if stage:
        click.echo(f"staged: join of the cluster of {seed} (cluster plan shows it, cluster commit applies it)")
    else:
        click.echo(f"joined the cluster of {seed}")


@cluster.command()
@_STAGE_OPTION
@NODE_OPTION
def leave(stage: bool, url: str) -> None:
    """The node at --node hands off everything it holds, leaves the cluster and stops (with --stage:
    once the staged changes are committed)."""
    data = _admin(url, "/admin/leave", method="POST", params=_stage_param(stage))
    if stage:
        click.echo(f"staged: leave of {data['leaving']}")
    else:
        click.echo("leaving: its partitions are being handed off; it stops once they are")


@cluster.command()
@click.argument("name")
@_STAGE_OPTION
@NODE_OPTION
def remove(name: str, stage: bool, url: str) -> None:
    """Remove NAME, a node gone for good; its partitions are rebuilt from the other replicas (with
    --stage: once the staged changes are committed)."""
    _admin(url, "/admin/remove", method="POST", params={"node": name, **_stage_param(stage)})
    click.echo(f"staged: remove of {name}" if stage else f"removed {name}")


@cluster.command()
@click.argument("old")
@click.argument("new")
@NODE_OPTION
def replace(old: str, new: str, url: str) -> None:
    """Stage the replace of OLD by NEW, a node staged to join (`cluster join SEED --stage` at NEW): at
    commit NEW takes exactly OLD's partitions, and OLD leaves once it has handed them off."""
    _admin(url, "/admin/replace", method="POST", params={"old": old, "new": new})
    click.echo(f"staged: replace of {old} by {new}")


@cluster.command()
@NODE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def plan(url: str, as_json: bool) -> None:
    """The staged changes and what committing them will move: each node's partitions now and after,
    gained and lost, and the transfers between nodes (computed with the claimant's own claim)."""
    data = _admin(url, "/admin/plan")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    if not data["changes"]:
        click.echo("there are no staged changes")
        return
    click.echo(f"staged changes (plan {data['plan_id']}, from ring v{data['ring_version']}, seen from {data['node']}):")
    click.echo(f"  {'action':<10} details")
    for change in data["changes"]:
        details = change["node"] + (f" by {change['target']}" if change["target"] else "")
        click.echo(f"  {change['action']:<10} {details}")
    click.echo(f"applying these changes results in {data['transitions']} ring transition")
    click.echo("after the transition:")
    click.echo(f"  {'status':<9} {'now':>5} {'after':>6} {'gains':>6} {'losses':>7}  node")
    size = data["ring_size"]
    for n in data["nodes"]:
        share = f"{100 * n['partitions_after'] / size:.1f}%"
        click.echo(
            f"  {n['status_after']:<9} {n['partitions_now']:>5} {n['partitions_after']:>6} {n['gains']:>+6} "
            f"{-n['losses']:>+7}  {n['name']} ({share})"
        )
    click.echo(f"transfers resulting from these changes: {data['partitions_moved']} partitions")
    for move in data["moves"]:
        click.echo(f"  {move['partitions']} from {move['from']} to {move['to']}")
    for warning in data["warnings"]:
        click.echo(f"WARNING: {warning}")


@cluster.command()
@click.option("--plan-id", default=None, help="Commit only if the staged changes are still those of this plan.")
@NODE_OPTION
def commit(plan_id: str | None, url: str) -> None:
    """Apply every staged change at once: the claimant makes one ring transition of them. Commits the
    plan that `cluster plan` at the same node shows now (or refuses if it is not --plan-id's)."""
    planned = _admin(url, "/admin/plan")
    if not planned["changes"]:
        _fail("there are no staged changes")
    if plan_id is not None and plan_id != planned["plan_id"]:
        _fail("the staged changes or the ring changed since that plan; run cluster plan again")
    _admin(url, "/admin/commit", method="POST", params={"plan": planned["plan_id"]})
    click.echo(
        f"committed {len(planned['changes'])} staged changes (plan {planned['plan_id']}): "
        f"{planned['partitions_moved']} partitions move (cluster status shows the transfers)"
    )


@cluster.command()
@NODE_OPTION
def clear(url: str) -> None:
    """Drop every staged change (nodes staged to join are removed again, and stop)."""
    _admin(url, "/admin/clear", method="POST")
    click.echo("cleared the staged changes")


@cluster.command("repair")
@click.argument("partition", type=int, required=False)
@click.option("--all", "everything", is_flag=True, help="Every partition the node is a replica of.")
@click.option("--wait", "wait_s", type=float, default=None, help="Wait up to this many seconds for the exchanges.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@NODE_OPTION
def cluster_repair(partition: int | None, everything: bool, wait_s: float | None, as_json: bool, url: str) -> None:
    """Run anti-entropy now at the node at --node: exchange PARTITION (or, with --all, every partition
    it holds) with each of the partition's other primaries, repairing the keys that differ."""
    if (partition is None) == (not everything):
        raise click.UsageError("give a PARTITION or --all")
    params = {"all": "true"} if everything else {"partition": str(partition)}
    before = _admin(url, "/admin/aae")["partitions"] if wait_s is not None else {}
    data = _admin(url, "/admin/repair", method="POST", params=params)
    gave_up: list[str] = []
    if wait_s is not None:
        rows = _wait_repaired(url, data, wait_s)
        data["partitions_status"] = rows
        # Keys the exchanges asked for repaired (each partition's count since the node started, less before).
        data["keys_repaired"] = sum(
            row["keys_repaired"] - before.get(p, {}).get("keys_repaired", 0) for p, row in rows.items() if row
        )
        since = data["requested_at_ms"]
        gave_up = [p for p, row in rows.items() if row and (row["repair_given_up_at_ms"] or 0) >= since]
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(f"{data['node']}: anti-entropy exchanges queued for {len(data['partitions'])} partitions")
        if wait_s is not None:
            click.echo(f"done: {data['keys_repaired']} keys repaired")
    if gave_up:
        _fail(f"exchanges given up (a peer down or too busy) for partitions {', '.join(gave_up)}")


def _wait_repaired(url: str, data: dict[str, Any], wait_s: float) -> dict[str, Any]:
    """Poll until every partition asked for has no exchange queued or running and has exchanged (or
    given up) since the request; its rows of `/admin/aae`."""
    since = data["requested_at_ms"]
    wanted = sorted((str(p) for p in data["partitions"]), key=int)

    def finished(row: dict[str, Any] | None) -> bool:
        if row is None:
            return True
        if row["repairs_queued"] or row["exchanging"]:
            return False
        last, gave_up = row["last_exchange"], row["repair_given_up_at_ms"]
        return (last is not None and last["at_ms"] >= since) or (gave_up is not None and gave_up >= since)

    deadline = time.monotonic() + wait_s
    while True:
        status = _admin(url, "/admin/aae")
        rows = {p: status["partitions"].get(p) for p in wanted}
        if all(finished(row) for row in rows.values()):
            return rows
        if time.monotonic() > deadline:
            _fail(f"repair not finished after {wait_s:.0f} s (cluster aae-status shows where it is)")
        time.sleep(0.2)


@cluster.command("aae-status")
@NODE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def aae_status(url: str, as_json: bool) -> None:
    """Anti-entropy at the node at --node, per partition it holds: when its tree was built, its last
    exchange (when, with whom, keys repaired) and keys repaired since the node started."""
    data = _admin(url, "/admin/aae")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    now_ms = data["now_ms"]

    def ago(at_ms: int | None) -> str:
        return "never" if at_ms is None else f"{(now_ms - at_ms) / 1000:.1f} s ago"

    built: dict[str, int | None] = {}
    for name, tree in data["trees"].items():
        partition = name.split("/")[0]
        if tree["primary"]:
            at = tree["built_at_ms"]
            built[partition] = at if built.get(partition) is None else max(at or 0, built[partition] or 0)
    click.echo(f"anti-entropy at {data['node']}:")
    click.echo(
        f"  {'partition':>9}  {'tree built':<14} {'last exchange':<14} {'with':<12} {'repaired':>8} {'total':>7}"
    )
    for partition, row in sorted(data["partitions"].items(), key=lambda item: int(item[0])):
        last = row["last_exchange"]
        state = (
            " (exchanging)"
            if row["exchanging"]
            else (f" ({row['repairs_queued']} queued)" if row["repairs_queued"] else "")
        )
        peer, repaired = ("-", 0) if last is None else (last["peer"], last["keys_repaired"])
        click.echo(
            f"  {partition:>9}  {ago(built.get(partition)):<14} {ago(last and last['at_ms']):<14} "
            f"{peer:<12} {repaired:>8} {row['keys_repaired']:>7}{state}"
        )


def _admin(
    url: str, path: str, method: str = "GET", params: dict[str, str] | None = None, body: bytes | None = None
) -> Any:
    from urllib.parse import quote, urlencode

    target = path + ("?" + urlencode(params, quote_via=quote) if params else "")
    try:
        from dynastore.localcluster import http_json

        headers = _auth_headers(url, method, target, body or b"")
        if body is not None:
            headers["Content-Type"] = "application/json"
        return http_json(url.rstrip("/") + target, timeout_s=30.0, method=method, data=body, headers=headers)
    except urllib.error.HTTPError as exc:
        _fail(f"{exc.code}: {exc.read().decode(errors='replace').strip()}")
    except (OSError, urllib.error.URLError) as exc:
        _fail(f"cannot reach {url}: {exc}")


# --- bucket types ------------------------------------------------------------------------------------------------


@main.group("bucket-type")
def bucket_type() -> None:
    """Bucket types (as in Riak 2): create, activate, update, status, list.

    A type is created inactive, with properties given as JSON ('{"props":{"datatype":"counter"}}'),
    and used once activated. Each command acts on --node with the credentials of `security`."""


def _type_body(props_json: str) -> bytes:
    try:
        data = json.loads(props_json)
    except ValueError as exc:
        _fail(f'properties must be JSON such as \'{{"props":{{"n_val":3}}}}\': {exc}')
    if not isinstance(data, dict) or not isinstance(data.get("props", {}), dict):
        _fail("properties must be JSON of the form '{\"props\":{...}}'")
    return json.dumps(data).encode()


def _print_type(data: dict[str, Any]) -> None:
    click.echo(f"{data['name']} is {'active' if data['active'] else 'not active'}")
    for name, value in sorted(data["props"].items()):
        click.echo(f"  {name}: {json.dumps(value)}")


@bucket_type.command("create")
@click.argument("name")
@click.argument("props", default='{"props":{}}')
@NODE_OPTION
def bucket_type_create(name: str, props: str, url: str) -> None:
    """Create bucket type NAME (inactive) with PROPS, JSON as '{"props":{...}}'."""
    _admin(url, f"/admin/bucket-types/{_quote_segment(name)}", method="POST", body=_type_body(props))
    click.echo(f"{name} created")


@bucket_type.command("activate")
@click.argument("name")
@NODE_OPTION
def bucket_type_activate(name: str, url: str) -> None:
    """Make bucket type NAME usable (its datatype is fixed from then on)."""
    _admin(url, f"/admin/bucket-types/{_quote_segment(name)}/activate", method="POST")
    click.echo(f"{name} has been activated")


@bucket_type.command("update")
@click.argument("name")
@click.argument("props")
@NODE_OPTION
def bucket_type_update(name: str, props: str, url: str) -> None:
    """Change the properties of bucket type NAME (PROPS as for create)."""
    _admin(url, f"/admin/bucket-types/{_quote_segment(name)}", method="PUT", body=_type_body(props))
    click.echo(f"{name} updated")


@bucket_type.command("status")
@click.argument("name")
@NODE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def bucket_type_status(name: str, url: str, as_json: bool) -> None:
    """Whether bucket type NAME is active, and the properties it sets."""
    data = _admin(url, f"/admin/bucket-types/{_quote_segment(name)}")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    _print_type(data)


@bucket_type.command("list")
@NODE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def bucket_type_list(url: str, as_json: bool) -> None:
    """Every bucket type, and whether it is active."""
    data = _admin(url, "/admin/bucket-types")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for entry in data["types"]:
        click.echo(f"{entry['name']} ({'active' if entry['active'] else 'not active'})")


def _quote_segment(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


# --- security ----------------------------------------------------------------------------------------------------


@main.group()
def security() -> None:
    """Users and permissions (Riak-style): enable, disable, status, add-user, del-user, grant, revoke, list.

    Each acts on --node and authenticates as a user holding dynastore.admin (--user, with its password
    from DYNASTORE_PASSWORD, a file or a prompt) or with the cluster secret (--secret-file, or
    DYNASTORE_CLUSTER_SECRET), which is how the first admin is made."""


@security.command("enable")
@NODE_OPTION
def security_enable(url: str) -> None:
    """Turn security on for the whole cluster (refused unless every member serves TLS or loopback only)."""
    _admin(url, "/admin/security/enable", method="POST")
    click.echo("security enabled")


@security.command("disable")
@NODE_OPTION
def security_disable(url: str) -> None:
    """Turn security off for the whole cluster."""
    _admin(url, "/admin/security/disable", method="POST")
    click.echo("security disabled")


@security.command("status")
@NODE_OPTION
def security_status(url: str) -> None:
    """Whether security is on, and how many users there are."""
    data = _admin(url, "/admin/security")
    click.echo(f"security {'enabled' if data['enabled'] else 'disabled'}; {len(data['users'])} users")


@security.command("list")
@NODE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def security_list(url: str, as_json: bool) -> None:
    """Every user and what it is granted, and on what."""
    data = _admin(url, "/admin/security")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"security {'enabled' if data['enabled'] else 'disabled'}")
    for user in data["users"]:
        grants = ", ".join(f"{g['permission']} on {g['on']}" for g in user["grants"]) or "nothing"
        click.echo(f"  {user['name']}: {grants}")


@security.command("add-user")
@click.argument("name")
@click.option("--password", "new_password", default=None, help="The new user's password (else prompted for).")
@click.option(
    "--password-file",
    "new_password_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Read the new user's password from this file.",
)
@_URL_OPTION
@_CA_OPTION
@click.option(
    "--user",
    envvar="DYNASTORE_USER",
    expose_value=False,
    callback=_remember("user"),
    help="Admin to authenticate as (its password from DYNASTORE_PASSWORD or a prompt).",
)
@click.option(
    "--secret",
    envvar="DYNASTORE_CLUSTER_SECRET",
    expose_value=False,
    callback=_remember("secret"),
    help="The cluster secret (env DYNASTORE_CLUSTER_SECRET).",
)
@click.option(
    "--secret-file",
    expose_value=False,
    callback=_read_file("secret"),
    type=click.Path(dir_okay=False),
    help="Read the cluster secret from this file.",
)
def security_add_user(name: str, new_password: str | None, new_password_file: str | None, url: str) -> None:
    """Add user NAME (or change its password). The password is hashed by the node (salted scrypt)."""
    if os.environ.get("DYNASTORE_PASSWORD"):
        _CREDENTIALS.setdefault("password", os.environ["DYNASTORE_PASSWORD"])
    if new_password_file:
        try:
            new_password = Path(new_password_file).read_text().strip()
        except OSError as exc:
            _fail(f"cannot read {new_password_file}: {exc}")
    if new_password is None:
        if not sys.stdin.isatty():
            _fail("add-user needs the new password: --password-file or a terminal to prompt on")
        new_password = click.prompt(
            f"password for new user {name}", hide_input=True, confirmation_prompt=True, err=True
        )
    body = json.dumps({"password": new_password}).encode()
    _admin(url, "/admin/security/users", method="POST", params={"name": name}, body=body)
    click.echo(f"user {name} added")


@security.command("del-user")
@click.argument("name")
@NODE_OPTION
def security_del_user(name: str, url: str) -> None:
    """Delete user NAME and its grants."""
    _admin(url, "/admin/security/users/delete", method="POST", params={"name": name})
    click.echo(f"user {name} deleted")


@security.command("grant")
@click.argument("permissions")
@click.option("--on", "scope", required=True, help="any, a bucket type or bucket name, or TYPE/BUCKET.")
@click.option("--to", "grantee", required=True, help="The user granted them.")
@NODE_OPTION
def security_grant(permissions: str, scope: str, grantee: str, url: str) -> None:
    """Grant PERM[,PERM...] (Riak's names, dynastore.status, dynastore.admin) on a scope to a user."""
    params = {"permissions": permissions, "on": scope, "user": grantee}
    _admin(url, "/admin/security/grant", method="POST", params=params)
    click.echo(f"granted {permissions} on {scope} to {grantee}")


@security.command("revoke")
@click.argument("permissions")
@click.option("--on", "scope", required=True, help="The scope they were granted on.")
@click.option("--from", "grantee", required=True, help="The user they are taken from.")
@NODE_OPTION
def security_revoke(permissions: str, scope: str, grantee: str, url: str) -> None:
    """Revoke PERM[,PERM...] on a scope from a user."""
    params = {"permissions": permissions, "on": scope, "user": grantee}
    _admin(url, "/admin/security/revoke", method="POST", params=params)
    click.echo(f"revoked {permissions} on {scope} from {grantee}")


# --- data commands ----------------------------------------------------------------------------------------------


def _quorum_options(*names: str) -> Callable[[F], F]:
    def wrap(fn: F) -> F:
        for name in reversed(names):
            fn = click.option(f"--{name}", default=None, help=f"Quorum {name} (integer, one, quorum, all).")(fn)
        return fn

    return wrap


def _run(coro: Any) -> Any:
    from dynastore.client.http import ClientError

    try:
        return asyncio.run(coro)
    except ClientError as exc:
        _fail(str(exc))


@main.command()
@click.argument("bucket")
@click.argument("key")
@NODE_OPTION
@_quorum_options("r", "pr")
def get(bucket: str, key: str, url: str, r: str | None, pr: str | None) -> None:
    """Fetch a key; every sibling is shown, numbered."""
    from dynastore.client.http import HttpClient

    async def go() -> None:
        async with HttpClient(url, ssl_context=_ssl_context(), auth=_user_auth()) as client:
            fetched = await client.get(bucket, key, r=r, pr=pr)
        if not fetched.exists:
            click.echo(f"not found{' (deleted)' if fetched.context else ''}", err=True)
            sys.exit(2)
        if len(fetched.values) == 1:
            click.echo(fetched.values[0].data.decode(errors="replace"))
        else:
            click.echo(f"{len(fetched.values)} siblings:")
            for i, value in enumerate(fetched.values, 1):
                click.echo(f"  [{i}] ({value.content_type}, vtag {value.vtag}) {value.data.decode(errors='replace')}")
        click.echo(f"context: {fetched.context}", err=True)

    _run(go())


@main.command()
@click.argument("bucket")
@click.argument("key")
@click.argument("value")
@NODE_OPTION
@click.option("--context", default=None, help="Context from a previous get (resolves what it saw).")
@click.option("--content-type", default="text/plain", show_default=True)
@_quorum_options("w", "dw", "pw")
def put(
    bucket: str,
    key: str,
    value: str,
    url: str,
    context: str | None,
    content_type: str,
    w: str | None,
    dw: str | None,
    pw: str | None,
) -> None:
    """Store VALUE (or standard input when VALUE is -)."""
    from dynastore.client.http import HttpClient

    data = sys.stdin.buffer.read() if value == "-" else value.encode()

    async def go() -> None:
        async with HttpClient(url, ssl_context=_ssl_context(), auth=_user_auth()) as client:
            new_context = await client.put(
                bucket, key, data, context=context, content_type=content_type, w=w, dw=dw, pw=pw
            )
        click.echo(f"stored; context: {new_context}")

    _run(go())


@main.command()
@click.argument("bucket")
@click.argument("key")
@NODE_OPTION
@click.option("--context", default=None, help="Context from a previous get.")
@_quorum_options("w")
def delete(bucket: str, key: str, url: str, context: str | None, w: str | None) -> None:
    """Delete a key."""
    from dynastore.client.http import HttpClient

    async def go() -> None:
        async with HttpClient(url, ssl_context=_ssl_context(), auth=_user_auth()) as client:
            existed = await client.delete(bucket, key, context=context, w=w)
        if not existed:
            click.echo("not found", err=True)
            sys.exit(2)
        click.echo("deleted")

    _run(go())


# --- data types --------------------------------------------------------------------------------------------------


@main.group()
def dt() -> None:
    """Data types (counters, sets, maps, HyperLogLogs) in bucket types whose datatype is set."""


@dt.command("get")
@click.argument("bucket_type", metavar="TYPE")
@click.argument("bucket")
@click.argument("key")
@NODE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print type, value and context as JSON.")
@_quorum_options("r")
def dt_get(bucket_type: str, bucket: str, key: str, url: str, as_json: bool, r: str | None) -> None:
    """Fetch the value of a data type (its context on standard error, for removes)."""
    from dynastore.client.http import HttpClient

    async def go() -> None:
        async with HttpClient(url, ssl_context=_ssl_context(), auth=_user_auth()) as client:
            found = await client.dt_get(bucket_type, bucket, key, r=r)
        if found is None:
            click.echo("not found", err=True)
            sys.exit(2)
        if as_json:
            click.echo(json.dumps({"type": found.type, "value": found.value, "context": found.context}))
            return
        click.echo(json.dumps(found.value))
        if found.context:
            click.echo(f"context: {found.context}", err=True)

    _run(go())


@dt.command("update")
@click.argument("bucket_type", metavar="TYPE")
@click.argument("bucket")
@click.argument("key")
@click.argument("operation")
@NODE_OPTION
@click.option("--context", default=None, help="Context from a previous dt get (a remove removes what it saw).")
@_quorum_options("w")
def dt_update(
    bucket_type: str, bucket: str, key: str, operation: str, url: str, context: str | None, w: str | None
) -> None:
    """Apply OPERATION, Riak's JSON ('{"increment":1}', '{"add":"x"}', '{"update":{"n_counter":1}}'),
    and print the new value."""
    from dynastore.client.http import HttpClient

    try:
        op = json.loads(operation)
    except ValueError as exc:
        _fail(f"the operation must be JSON: {exc}")

    async def go() -> None:
        async with HttpClient(url, ssl_context=_ssl_context(), auth=_user_auth()) as client:
            _, found = await client.dt_update(bucket_type, bucket, key, op, context=context, w=w, return_body=True)
        click.echo(json.dumps(None if found is None else found.value))

    _run(go())


# --- bench -------------------------------------------------------------------------------------------------------


@main.group()
def bench() -> None:
    """Benchmarks and experiments."""


@bench.command("partitioning", context_settings={"ignore_unknown_options": True})
@click.option("--nodes", type=click.IntRange(1, 1000), default=30, show_default=True)
@click.option("--n", "n_val", type=click.IntRange(1, 10), default=3, show_default=True)
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def partitioning(nodes: int, n_val: int, extra: tuple[str, ...]) -> None:
    """The Dynamo paper's partitioning experiment (load balance of three strategies)."""
    from dynastore.bench.partitioning import main as run_partitioning

    sys.exit(run_partitioning(["--nodes", str(nodes), "--n", str(n_val), *extra]))


@bench.command("repair", context_settings={"ignore_unknown_options": True})
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def repair(extra: tuple[str, ...]) -> None:
    """Anti-entropy: bytes exchanged per difference (traffic) and foreground p99 during repair (pacing)."""
    from dynastore.bench.repair import main as run_repair

    sys.exit(run_repair(list(extra)))


@bench.command("detection", context_settings={"ignore_unknown_options": True})
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def detection(extra: tuple[str, ...]) -> None:
    """Time failure detection after SIGKILL and SIGSTOP of one node (see --help of the module)."""
    from dynastore.bench.detection import main as run_detection

    sys.exit(run_detection(list(extra)))


@bench.command("cost", context_settings={"ignore_unknown_options": True})
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def cost(extra: tuple[str, ...]) -> None:
    """CPU per request on each node: ping, reads on 1 and 3 nodes, inserts (see --help of the module)."""
    from dynastore.bench.cost import main as run_cost

    sys.exit(run_cost(list(extra)))


# The module parses its own options, so --help is passed through to it rather than answered here.
_PASS_THROUGH = {"ignore_unknown_options": True, "help_option_names": []}


@bench.command("ycsb", context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def ycsb(extra: tuple[str, ...]) -> None:
    """YCSB workloads A, B, C, F against dynastore, etcd, redis and pysyncobj (see --help)."""
    from dynastore.bench.ycsb import main as run_ycsb

    sys.exit(run_ycsb(list(extra)))


@bench.command("paper", context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def paper(extra: tuple[str, ...]) -> None:
    """The Dynamo paper's measurements: client- vs server-driven coordination, buffered vs durable writes."""
    from dynastore.bench.ycsb import paper_main

    sys.exit(paper_main(list(extra)))


if __name__ == "__main__":
    main()
