"""The `dynastore` command: run nodes, a local cluster, cluster administration, data commands, benchmarks.

Every command has --help; an error is one line on stderr. Exit status: 0 done, 1 error, 2 usage (a bad
option or argument, as click reports it), 3 not found (a key, a bucket type, a user...). Every command
that reads takes --json (`JSON_OPTION`) and prints the answer as one JSON document instead of text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from dynastore import __version__
from dynastore.settings import (
    LOG_FORMATS,
    LOG_LEVELS,
    NodeOptions,
    Settings,
    SettingsError,
    combine,
    parse_address,
    read_config,
)

F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR = 1
EXIT_USAGE = 2  # click's own, for a bad option or argument
EXIT_NOT_FOUND = 3


def _fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"dynastore: {message}", err=True)
    sys.exit(code)


def _not_found(message: str) -> NoReturn:
    _fail(message, EXIT_NOT_FOUND)


# --- --json ----------------------------------------------------------------------------------------------

_JSON_META = "dynastore.json"


def _remember_json(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    ctx.meta[_JSON_META] = value


def JSON_OPTION(fn: F) -> F:
    """--json on a command that reads: the command hands what it read to `_output`, which prints it as
    JSON with this option and as text (the command's own printer) without."""
    return click.option(
        "--json",
        is_flag=True,
        expose_value=False,
        callback=_remember_json,
        help="Print the answer as JSON (for scripts) instead of text.",
    )(fn)


def _json_wanted() -> bool:
    return bool(click.get_current_context().meta.get(_JSON_META))


def _output(data: Any, text: Callable[[Any], None]) -> None:
    """Print `data` as JSON when --json was given, else as `text` prints it."""
    if _json_wanted():
        click.echo(json.dumps(data, indent=2))
    else:
        text(data)


def _layers(config: str | None, overrides: tuple[str, ...], flags: dict[str, Any]) -> list[Any]:
    """The configuration's sources, lowest precedence first: the config file, the DYNASTORE_*
    environment, `--set`, then the command's own flags (those given: None is not given)."""
    from dynastore.settings import Layer, SettingsError, environment_layer, overrides_layer, parse_node_option

    layers = [read_config(Path(config))] if config else []
    layers += [environment_layer(os.environ), overrides_layer(overrides)]
    given: dict[str, Any] = {}
    problems: list[str] = []
    for name, value in flags.items():
        if value is None or value == ():
            continue
        try:
            given[name] = parse_node_option(name, value)
        except SettingsError as exc:
            problems.append(f"--{name.replace('_', '-')}: {exc}")
    return [*layers, Layer({}, given, problems)]


def _configure(
    config: str | None, overrides: tuple[str, ...], flags: dict[str, Any] | None = None
) -> tuple[Settings, NodeOptions]:
    """Settings and node options, flag > environment > file > default; a secret may come from
    `cluster_secret_file` or DYNASTORE_CLUSTER_SECRET (the `cluster_secret` setting's variable), so that
    it need not be on a command line."""
    from dynastore.runtime.secrets import resolve

    try:
        settings, options = combine(*_layers(config, overrides, flags or {}))
        return resolve(settings), options
    except SettingsError as exc:
        _fail(str(exc))
        raise AssertionError from exc


def _address(text: str, what: str) -> tuple[str, int]:
    try:
        return parse_address(text, what)
    except SettingsError as exc:
        _fail(str(exc))
        raise AssertionError from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="dynastore", message="%(prog)s %(version)s")
def main() -> None:
    """dynastore: a highly available, decentralised key-value store (Dynamo design)."""


# --- node ------------------------------------------------------------------------------------------------


def LOG_OPTIONS(fn: F) -> F:
    """--log-level and --log-format (also `log_level`/`log_format` in [node], DYNASTORE_NODE_LOG_*)."""
    fn = click.option(
        "--log-format",
        type=click.Choice(LOG_FORMATS, case_sensitive=False),
        default=None,
        help="text (default): one line per record; json: one object per line (ts, level, logger, msg, event fields).",
    )(fn)
    return click.option(
        "--log-level",
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        default=None,
        help="The least severe records logged (default: info).",
    )(fn)


@main.command()
@click.option("--name", default=None, help="Node name, unique in the cluster (required: here, in [node] or env).")
@click.option("--host", default=None, help="Address to listen on; 0.0.0.0 for every interface. [default: 127.0.0.1]")
@click.option(
    "--advertise-host",
    default=None,
    help="Address peers and clients are told (member record, /ring, seeds). [default: --host; needed with 0.0.0.0]",
)
@click.option("--http-port", type=int, default=None, help="[default: 8098]")
@click.option("--peer-port", type=int, default=None, help="[default: 9000]")
@click.option("--pb-port", type=int, default=None, help="Riak's Protocol Buffers API; 0: none. [default: 8087]")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Its data directory (required).")
@click.option("--seed", "seeds", multiple=True, help="A member's host:peer-port; a new node joins its cluster.")
@click.option("--weight", type=int, default=None, help="Share of partitions relative to others. [default: 1]")
@click.option(
    "--config",
    type=click.Path(dir_okay=False, exists=True),
    help="TOML file: settings at the top level, node options in a [node] table.",
)
@click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE", help="Override a setting.")
@LOG_OPTIONS
def node(
    name: str | None,
    host: str | None,
    advertise_host: str | None,
    http_port: int | None,
    peer_port: int | None,
    pb_port: int | None,
    data_dir: str | None,
    seeds: tuple[str, ...],
    weight: int | None,
    config: str | None,
    overrides: tuple[str, ...],
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Run one node in the foreground (one per machine on real hosts).

    Every option may also be given in the config file's [node] table (name, host, advertise_host,
    http_port, peer_port, pb_port, data_dir, seeds, weight, log_level, log_format) or a DYNASTORE_NODE_<OPTION>
    variable (DYNASTORE_NODE_ADVERTISE_HOST), and every setting as DYNASTORE_<SETTING>
    (DYNASTORE_N_VAL): flag > environment > file > default."""
    from dynastore.runtime import logs
    from dynastore.runtime.node import NodeConfig
    from dynastore.runtime.serve import serve

    flags = {
        "name": name,
        "host": host,
        "advertise_host": advertise_host,
        "http_port": http_port,
        "peer_port": peer_port,
        "pb_port": pb_port,
        "data_dir": data_dir,
        "seeds": seeds,
        "weight": weight,
        "log_level": log_level,
        "log_format": log_format,
    }
    settings, options = _configure(config, overrides, flags)
    if not options.name:
        _fail("a node needs a name: --name, DYNASTORE_NODE_NAME or name in the config's [node] table")
    if not options.data_dir:
        _fail("a node needs a data directory: --data-dir, DYNASTORE_NODE_DATA_DIR or data_dir in [node]")
    logs.configure(options.log_level, options.log_format, node=options.name)
    cfg = NodeConfig(
        options.name,
        options.host,
        options.http_port,
        options.peer_port,
        Path(options.data_dir),
        tuple(_address(s, "--seed") for s in options.seeds),
        options.weight,
        advertise_host=options.advertise_host,
        pb_port=options.pb_port,
    )
    from dynastore.core.nodebase import StartupError
    from dynastore.net.tls import TlsError
    from dynastore.storage.base import StorageError

    try:
        serve(cfg, settings)
    except (OSError, TlsError, StartupError, StorageError) as exc:
        _fail(f"cannot start {options.name}: {exc}")


# --- up ----------------------------------------------------------------------------------------------------

# Node options `up` decides for each node itself (names node<i>, seeds node1.. with node0, equal weights).
_PER_NODE = ("name", "seeds", "weight")


@main.command()
@click.option("--nodes", type=click.IntRange(1, 64), default=3, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="[default: ./data]")
@click.option("--host", default=None, help="[default: 127.0.0.1]")
@click.option("--http-port", type=int, default=None, help="Node 0's; node i serves on +i. [default: 8098]")
@click.option("--peer-port", type=int, default=None, help="Node 0's; node i on +i. [default: 9000]")
@click.option("--pb-port", type=int, default=None, help="Node 0's Riak PB API; node i on +i; 0: none. [default: 8087]")
@click.option(
    "--config",
    type=click.Path(dir_okay=False, exists=True),
    help="TOML file of settings for every node; its [node] table's host, advertise_host, ports and "
    "data_dir are the bases of the nodes' own (name, seeds and weight are per node: refused).",
)
@click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE", help="Override a setting on every node.")
@LOG_OPTIONS
@click.option("--ready-timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for `ready`.")
def up(
    nodes: int,
    data_dir: str | None,
    host: str | None,
    http_port: int | None,
    peer_port: int | None,
    pb_port: int | None,
    config: str | None,
    overrides: tuple[str, ...],
    log_level: str | None,
    log_format: str | None,
    ready_timeout: float,
) -> None:
    """Start a local cluster of NODES processes; Ctrl-C stops them all. Running it again restarts the
    same cluster from its data. Settings and node options come as for `node` (flag > DYNASTORE_*
    environment > --config file > default); every node gets the same."""
    from dynastore.localcluster import LocalCluster

    flags = {
        "host": host,
        "http_port": http_port,
        "peer_port": peer_port,
        "pb_port": pb_port,
        "data_dir": data_dir,
        "log_level": log_level,
        "log_format": log_format,
    }
    settings, options = _configure(config, overrides, flags)
    from dynastore.settings import NODE_TABLE, env_variable, environment_layer

    given = environment_layer(os.environ).node
    file_node = read_config(Path(config)).node if config else {}
    for name in _PER_NODE:
        if name in file_node:
            _fail(f"[{NODE_TABLE}] {name}: up gives each node its own {name}; remove it from {config}")
        if name in given:
            _fail(f"{env_variable(name)}: up gives each node its own {name}; unset it")
    for port_name in ("http_port", "peer_port", "pb_port"):
        if getattr(options, port_name) + nodes - 1 > 65535:
            _fail(f"{port_name} {getattr(options, port_name)} leaves no room for {nodes} nodes")
    root = Path(options.data_dir or "./data")
    root.mkdir(parents=True, exist_ok=True)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    # Every node shares one secret: the one given (the nodes read it as this command did), else one
    # kept with the data in DATA_DIR/cluster.secret, created with the cluster. The nodes read the same
    # config file and environment; what this command resolved goes to them as flags.
    node_args = ["--log-level", options.log_level, "--log-format", options.log_format]
    if config:
        node_args += ["--config", str(Path(config).resolve())]
    cluster = LocalCluster(
        root,
        nodes,
        host=options.host,
        advertise_host=options.advertise_host,
        http_port=options.http_port,
        peer_port=options.peer_port,
        pb_port=options.pb_port,
        overrides=overrides,
        make_secret=not settings.cluster_secret,
        node_args=tuple(node_args),
    )
    try:
        cluster.start()
        for node in cluster.nodes:
            pb = f"  pb {node.pb_address}" if node.pb_port else ""
            click.echo(
                f"{node.name}: {node.url}{pb}  peer {node.peer_address}  data {node.data_dir}  log {node.log_path}"
            )
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


# --- config ------------------------------------------------------------------------------------------------


@main.group("config")
def config_group() -> None:
    """Config files: check."""


@config_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def config_check(file: str) -> None:
    """Check FILE as `dynastore node --config FILE` would read it, with this DYNASTORE_* environment:
    exit 0 with one line saying OK, or 1 with every problem, one a line, each naming its key."""
    from dynastore.core.secret import startup_problem
    from dynastore.net.rpc import WILDCARD_HOSTS
    from dynastore.runtime.secrets import resolve
    from dynastore.settings import environment_layer, problems_of

    layers = [read_config(Path(file)), environment_layer(os.environ)]
    problems = problems_of(*layers)
    if not problems:
        settings, options = combine(*layers)
        try:
            settings = resolve(settings)
        except SettingsError as exc:
            problems.append(str(exc))
        else:
            # A wildcard bind is checked as the node will run: advertising an address still to come.
            advertised = options.advertise_host or options.host
            problem = startup_problem(settings, options.host, "" if advertised in WILDCARD_HOSTS else advertised)
            if problem is not None:
                problems.append(problem)
    if problems:
        for problem in problems:
            click.echo(f"{file}: {problem}", err=True)
        sys.exit(1)
    missing = [what for what in ("name", "data_dir") if not getattr(options, what)]
    if (options.advertise_host or options.host) in WILDCARD_HOSTS:
        missing.append("advertise_host")
    later = f"; {', '.join(missing)} to come from flags or DYNASTORE_NODE_*" if missing else ""
    who = f"node {options.name} " if options.name else ""
    where = options.host + (f" advertised as {options.advertise_host}" if options.advertise_host else "")
    click.echo(f"{file}: OK ({who}on {where}, {len(layers[0].settings)} settings{later})")


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
        from dynastore.net.tls import http_client_context

        # Loaded once here so that a missing or unreadable CA is a usage error, not a traceback later.
        try:
            http_client_context(value)
        except (OSError, ValueError) as exc:
            raise click.BadParameter(f"{value!r}: {exc}") from None
        os.environ["DYNASTORE_CA"] = value


def _check_node(ctx: click.Context, param: click.Parameter, value: str) -> str:
    # --ca is eager, so it has been seen (and is in the environment) by the time --node is checked.
    from dynastore.addresses import node_url

    try:
        return node_url(value, tls=bool(os.environ.get("DYNASTORE_CA")))
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: {exc}") from None


def _ssl_context() -> Any:
    ca_file = os.environ.get("DYNASTORE_CA")
    if not ca_file:
        return None
    from dynastore.net.tls import http_client_context

    return http_client_context(ca_file)


_URL_OPTION = click.option(
    "--node",
    "url",
    default="http://127.0.0.1:8098",
    show_default=True,
    metavar="URL|HOST[:PORT]",
    callback=_check_node,
    help="The node to act on: its URL, or host[:port] (http://, or https:// with --ca; port 8098).",
)
_CA_OPTION = click.option(
    "--ca",
    envvar="DYNASTORE_CA",
    metavar="FILE",
    expose_value=False,
    is_eager=True,
    callback=_remember_ca,
    help="CA file that verifies https:// nodes (env DYNASTORE_CA).",
)


def NODE_OPTION(fn: F) -> F:
    return _URL_OPTION(_CA_OPTION(CREDENTIAL_OPTIONS(fn)))


@cluster.command()
@NODE_OPTION
@JSON_OPTION
@click.option("--watch/--no-watch", default=None, help="Follow transfers until they finish (default: in a terminal).")
def status(url: str, watch: bool | None) -> None:
    """Members as this node sees them (status, reachability, phi, partitions) and ring transfers."""
    _output(_admin(url, "/admin/status"), lambda data: _print_status(url, data, watch))


def _print_status(url: str, data: dict[str, Any], watch: bool | None) -> None:
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


def _member_url(member: dict[str, Any]) -> str:
    """The HTTP API of a member as `/admin/status` lists it (https when it serves TLS)."""
    host = str(member["host"])
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if member.get('tls') else 'http'}://{host}:{member['http_port']}"


def _receiving(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every member's receiving transfers, asked of each member (each knows its own checkpoints)."""
    out: list[tuple[str, dict[str, Any]]] = []
    from dynastore.localcluster import http_json

    for m in data["members"]:
        if m["status"] == "removed" or not m["reachable"]:
            continue
        member_url = _member_url(m)
        scheme = member_url.split("://", 1)[0]
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
@JSON_OPTION
def ring(url: str) -> None:
    """Partition ownership."""
    _output(_admin(url, "/ring"), _print_ring)


def _print_ring(data: dict[str, Any]) -> None:
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
@JSON_OPTION
def plan(url: str) -> None:
    """The staged changes and what committing them will move: each node's partitions now and after,
    gained and lost, and the transfers between nodes (computed with the claimant's own claim)."""
    _output(_admin(url, "/admin/plan"), _print_plan)


def _print_plan(data: dict[str, Any]) -> None:
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
    url = _claimant_url(url)
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


def _claimant_url(url: str) -> str:
    """The claimant's URL, as the node at `url` knows it (only the claimant commits or clears)."""
    status = _admin(url, "/admin/status")
    claimant = status.get("claimant")
    if claimant is None or claimant == status.get("node"):
        return url
    member = next((m for m in status.get("members", []) if m.get("name") == claimant), None)
    if member is None:
        return url
    target = _member_url(member)
    click.echo(f"(asking the claimant, {claimant} at {target})", err=True)
    return target


@cluster.command()
@NODE_OPTION
def clear(url: str) -> None:
    """Drop every staged change (nodes staged to join are removed again, and stop)."""
    _admin(_claimant_url(url), "/admin/clear", method="POST")
    click.echo("cleared the staged changes")


@cluster.command("repair")
@click.argument("partition", type=int, required=False)
@click.option("--all", "everything", is_flag=True, help="Every partition the node is a replica of.")
@click.option("--wait", "wait_s", type=float, default=None, help="Wait up to this many seconds for the exchanges.")
@JSON_OPTION
@NODE_OPTION
def cluster_repair(partition: int | None, everything: bool, wait_s: float | None, url: str) -> None:
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

    def text(data: dict[str, Any]) -> None:
        click.echo(f"{data['node']}: anti-entropy exchanges queued for {len(data['partitions'])} partitions")
        if wait_s is not None:
            click.echo(f"done: {data['keys_repaired']} keys repaired")

    _output(data, text)
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
@JSON_OPTION
def aae_status(url: str) -> None:
    """Anti-entropy at the node at --node, per partition it holds: when its tree was built, its last
    exchange (when, with whom, keys repaired) and keys repaired since the node started."""
    _output(_admin(url, "/admin/aae"), _print_aae)


def _print_aae(data: dict[str, Any]) -> None:
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
        reason = exc.read().decode(errors="replace").strip()
        _fail(f"{exc.code}: {reason}", EXIT_NOT_FOUND if exc.code == 404 else EXIT_ERROR)
    except (OSError, urllib.error.URLError) as exc:
        _fail(f"cannot reach {url}: {exc}")
    except ValueError as exc:
        # Not JSON: whatever answers there is not a dynastore node (or not this version of one).
        _fail(f"{url} answered {path} with something other than JSON: {exc}")


# --- backup and restore ------------------------------------------------------------------------------------------


@main.command("backup")
@NODE_OPTION
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="New or empty directory.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(1, 86_400),
    default=600.0,
    show_default=True,
    help="Seconds to wait for the node to send anything (it sends nothing while it copies its store).",
)
def backup_command(url: str, out_dir: str, timeout_s: float) -> None:
    """Back up the node at --node: a consistent copy of its store, made while it serves, streamed by
    it and written here into --out with a manifest (checksums, node, epoch, cluster metadata)."""
    import http.client
    from urllib.parse import urlsplit

    from dynastore import backup

    out = Path(out_dir)
    try:
        backup.check_out_dir(out)
    except backup.BackupError as exc:
        _fail(str(exc))
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        _fail(f"--node must be an http:// or https:// address, got {url!r}")
    host = parts.hostname or ""
    target = "/admin/backup"
    conn: http.client.HTTPConnection
    try:
        headers = _auth_headers(url, "GET", target, b"")
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(host, parts.port, timeout=timeout_s, context=_ssl_context())
        else:
            conn = http.client.HTTPConnection(host, parts.port, timeout=timeout_s)
        started = time.monotonic()
        try:
            conn.request("GET", target, headers=headers)
            resp = conn.getresponse()
            if resp.status != 200:
                _fail(f"{resp.status}: {resp.read(64 * 1024).decode(errors='replace').strip()}")
            manifest = backup.receive(resp.read, out)
        finally:
            conn.close()
    except backup.BackupError as exc:
        _fail(str(exc))
    except urllib.error.HTTPError as exc:
        _fail(f"{exc.code}: {exc.read().decode(errors='replace').strip()}")
    except (OSError, http.client.HTTPException, urllib.error.URLError) as exc:
        _fail(f"backup from {url} failed: {exc or type(exc).__name__}")
    total = sum(entry["size"] for entry in manifest["files"])
    click.echo(
        f"backed up {manifest['node']} ({manifest['engine']}, epoch {manifest['epoch']}): {total} bytes "
        f"in {time.monotonic() - started:.1f} s into {out}"
    )


@main.command("restore")
@click.argument("backup_dir", metavar="DIR", type=click.Path(file_okay=False, exists=True))
@click.option("--data-dir", type=click.Path(file_okay=False), required=True, help="New or empty data directory.")
@click.option(
    "--force",
    is_flag=True,
    help="Restore a backup older than tombstone_grace_ms (keys deleted since it may come back).",
)
def restore_command(backup_dir: str, data_dir: str, force: bool) -> None:
    """Check the backup in DIR and make --data-dir a node's data directory holding it, under a new
    epoch so that the restored node never reuses a version counter. Start the node on it with its old
    --name: it rejoins, and anti-entropy brings it what was written after the backup."""
    import random

    from dynastore import backup
    from dynastore.storage.base import StorageError

    try:
        done = backup.restore(
            Path(backup_dir), Path(data_dir), now_ms=int(time.time() * 1000), force=force, rng=random.SystemRandom()
        )
    except (backup.BackupError, StorageError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"restore into {data_dir} failed: {exc}")
    manifest = done.manifest
    click.echo(
        f"restored {manifest['node']} ({manifest['engine']}, backed up {done.age_ms / 1000:.0f} s ago) into "
        f"{data_dir}; epoch {done.old_epoch:08x} -> {done.new_epoch:08x}; start it with --name {manifest['node']}"
    )


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
@JSON_OPTION
def bucket_type_status(name: str, url: str) -> None:
    """Whether bucket type NAME is active, and the properties it sets (exit 3 when there is no such type)."""
    _output(_admin(url, f"/admin/bucket-types/{_quote_segment(name)}"), _print_type)


@bucket_type.command("list")
@NODE_OPTION
@JSON_OPTION
def bucket_type_list(url: str) -> None:
    """Every bucket type, and whether it is active."""

    def text(data: dict[str, Any]) -> None:
        for entry in data["types"]:
            click.echo(f"{entry['name']} ({'active' if entry['active'] else 'not active'})")

    _output(_admin(url, "/admin/bucket-types"), text)


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
@JSON_OPTION
def security_status(url: str) -> None:
    """Whether security is on, and how many users there are."""
    data = _admin(url, "/admin/security")

    def text(summary: dict[str, Any]) -> None:
        click.echo(f"security {'enabled' if summary['enabled'] else 'disabled'}; {summary['users']} users")

    _output({"enabled": data["enabled"], "users": len(data["users"])}, text)


@security.command("list")
@NODE_OPTION
@JSON_OPTION
def security_list(url: str) -> None:
    """Every user and what it is granted, and on what."""

    def text(data: dict[str, Any]) -> None:
        click.echo(f"security {'enabled' if data['enabled'] else 'disabled'}")
        for user in data["users"]:
            grants = ", ".join(f"{g['permission']} on {g['on']}" for g in user["grants"]) or "nothing"
            click.echo(f"  {user['name']}: {grants}")

    _output(_admin(url, "/admin/security"), text)


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
        _fail(str(exc), EXIT_NOT_FOUND if exc.status == 404 else EXIT_ERROR)


@main.command()
@click.argument("bucket")
@click.argument("key")
@NODE_OPTION
@JSON_OPTION
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write the value's bytes to this file, unchanged (binary values).",
)
@click.option("--raw", is_flag=True, help="Write the value's bytes to standard output, unchanged.")
@click.option(
    "--sibling",
    type=click.IntRange(min=1),
    default=None,
    help="Only sibling N (numbered as get lists them); -o and --raw need it when there are siblings.",
)
@_quorum_options("r", "pr")
def get(
    bucket: str,
    key: str,
    url: str,
    output: str | None,
    raw: bool,
    sibling: int | None,
    r: str | None,
    pr: str | None,
) -> None:
    """Fetch a key; every sibling is shown, numbered (exit 3 when it does not exist).

    Values that are not UTF-8 text are not printed: -o FILE or --raw writes the bytes as stored. A key
    with siblings has several values, so -o and --raw refuse it (exit 1, naming the count) unless
    --sibling N picks one. The context, for a put that resolves what was read, goes to standard error.
    """
    from dynastore.client.http import HttpClient

    if output is not None and raw:
        raise click.UsageError("-o/--output and --raw both say where the value goes: give one")
    if _json_wanted() and (output is not None or raw):
        raise click.UsageError("--json prints the value itself (base64 too): it does not go with -o or --raw")

    async def fetch() -> Any:
        async with HttpClient(url, ssl_context=_ssl_context(), auth=_user_auth()) as client:
            return await client.get(bucket, key, r=r, pr=pr)

    fetched = _run(fetch())
    if not fetched.exists:
        _not_found(f"{bucket}/{key} not found{' (deleted)' if fetched.context else ''}")
    values = list(fetched.values)
    if sibling is not None:
        if sibling > len(values):
            _fail(f"{bucket}/{key} has {_siblings(len(values))}: there is no sibling {sibling}")
        values = [values[sibling - 1]]
    if output is not None or raw:
        if len(values) > 1:
            _fail(
                f"{bucket}/{key} has {len(values)} siblings: pick one with --sibling N (1 to {len(values)}), "
                "or see them all without -o/--raw"
            )
        if raw:
            sys.stdout.buffer.write(values[0].data)
            sys.stdout.buffer.flush()
        else:
            assert output is not None
            _write_file(Path(output), values[0].data)
        click.echo(f"context: {fetched.context}", err=True)
        return

    def text(_: object) -> None:
        if len(values) == 1:
            click.echo(_printable(values[0]))
        else:
            click.echo(f"{len(values)} siblings:")
            for i, value in enumerate(values, 1):
                click.echo(f"  [{i}] ({value.content_type}, vtag {value.vtag}) {_printable(value)}")
        click.echo(f"context: {fetched.context}", err=True)

    numbers = range(sibling, sibling + 1) if sibling is not None else range(1, len(values) + 1)
    document = {
        "bucket": bucket,
        "key": key,
        "context": fetched.context,
        "siblings": [_value_json(number, value) for number, value in zip(numbers, values, strict=True)],
    }
    _output(document, text)


def _siblings(count: int) -> str:
    return "1 value" if count == 1 else f"{count} siblings"


def _printable(value: Any) -> str:
    """A value as text, or what it is when it is not UTF-8 text (bytes are not for a terminal)."""
    try:
        return str(value.data.decode("utf-8"))
    except UnicodeDecodeError:
        return f"<{len(value.data)} bytes of binary data ({value.content_type}): use -o FILE or --raw>"


def _value_json(number: int, value: Any) -> dict[str, Any]:
    """One sibling for --json: `value` is its text (null when it is not UTF-8), `value_base64` its bytes."""
    import base64

    try:
        text: str | None = value.data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "sibling": number,
        "content_type": value.content_type,
        "vtag": value.vtag,
        "last_modified": value.last_modified,
        "usermeta": dict(value.usermeta),
        "value": text,
        "value_base64": base64.b64encode(value.data).decode("ascii"),
    }


def _write_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` whole or not at all: a temporary file beside it, renamed over it."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        _fail(f"cannot write {path}: {exc}")


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
            _not_found(f"{bucket}/{key} not found")
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
@JSON_OPTION
@_quorum_options("r")
def dt_get(bucket_type: str, bucket: str, key: str, url: str, r: str | None) -> None:
    """Fetch the value of a data type (its context on standard error, for removes; exit 3 when absent)."""
    from dynastore.client.http import HttpClient

    async def fetch() -> Any:
        async with HttpClient(url, ssl_context=_ssl_context(), auth=_user_auth()) as client:
            return await client.dt_get(bucket_type, bucket, key, r=r)

    found = _run(fetch())
    if found is None:
        _not_found(f"{bucket_type}/{bucket}/{key} not found")

    def text(_: object) -> None:
        click.echo(json.dumps(found.value))
        if found.context:
            click.echo(f"context: {found.context}", err=True)

    _output({"type": found.type, "value": found.value, "context": found.context}, text)


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


# Each bench module parses its own options (argparse), so its command hands it every argument, --help
# included: the help then lists the module's options rather than click's one EXTRA argument.
_PASS_THROUGH = {"ignore_unknown_options": True, "help_option_names": []}

# name -> (module, its entry point, summary shown by `dynastore bench --help`)
_BENCH_COMMANDS = {
    "partitioning": (
        "dynastore.bench.partitioning",
        "main",
        "The Dynamo paper's partitioning experiment (load balance of three strategies).",
    ),
    "repair": (
        "dynastore.bench.repair",
        "main",
        "Anti-entropy: bytes exchanged per difference (traffic) and foreground p99 during repair (pacing).",
    ),
    "detection": ("dynastore.bench.detection", "main", "Time failure detection after SIGKILL and SIGSTOP of one node."),
    "sim-scale": (
        "dynastore.bench.simscale",
        "main",
        "10 to 1,000 simulated nodes: gossip rounds after a join, gossip bytes, claim time, moves, balance.",
    ),
    "cost": (
        "dynastore.bench.cost",
        "main",
        "CPU per request on each node: ping, reads on 1 and 3 nodes, inserts, counter increments.",
    ),
    "wrk": (
        "dynastore.bench.wrkbench",
        "main",
        "GET and PUT under wrk against dynastore, etcd and redis; --faults: SIGSTOP and a cut, per second.",
    ),
    "scale": (
        "dynastore.bench.scale",
        "main",
        "How cost grows with data: throughput, p99, memory, disk, start-up and AAE rebuild at 1 M and 5 M keys.",
    ),
    "ycsb": ("dynastore.bench.ycsb", "main", "YCSB workloads A, B, C, F against dynastore, etcd, redis and pysyncobj."),
    "paper": (
        "dynastore.bench.ycsb",
        "paper_main",
        "The Dynamo paper's measurements: client- vs server-driven coordination, buffered vs durable writes.",
    ),
}


def _bench_command(name: str, module: str, entry: str, summary: str) -> None:
    @bench.command(name, context_settings=_PASS_THROUGH, add_help_option=False, help=summary)
    @click.argument("extra", nargs=-1, type=click.UNPROCESSED)
    def command(extra: tuple[str, ...]) -> None:
        import importlib

        run: Callable[[list[str]], int] = getattr(importlib.import_module(module), entry)
        sys.exit(run(list(extra)))


for _name, (_module, _entry, _summary) in _BENCH_COMMANDS.items():
    _bench_command(_name, _module, _entry, _summary)


if __name__ == "__main__":
    main()
