"""Every tunable of dynastore, with its default, in one place.

A node's behaviour is fully described by a `Settings` value. The CLI overrides any field by name
(`--set anti_entropy_interval_ms=2000`); a config file (TOML) may do the same. Names carry their unit
last (`_ms`, `_bytes`, `_count`) so that a value is never read in the wrong unit.

The config file may also hold the node's identity and process options (name, addresses, ports,
data directory, seeds, weight, log level and format) in a `[node]` table: `NodeOptions`. Every setting
may come from a `DYNASTORE_<SETTING>` environment variable (`DYNASTORE_N_VAL=5`) and every node
option from `DYNASTORE_NODE_<OPTION>` (`DYNASTORE_NODE_ADVERTISE_HOST=10.0.0.5`); no setting's name
starts with `node_`, so the two cannot clash. The precedence is flag > environment > file > default.
Variables that name neither (`DYNASTORE_CA`, `DYNASTORE_USER`, ...) are left alone.

This module must never read the environment or the clock: it only describes and validates. The
environment is handed in by the caller (the CLI).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


class SettingsError(ValueError):
    """A setting name or value given by the operator is not acceptable."""


@dataclass(frozen=True, slots=True)
class Settings:
    # --- Cluster identity and protocol -------------------------------------------------------------
    cluster_name: str = "dynastore"
    # Shared secret (at least 16 characters, the same on every node) from which the keys of the peer
    # handshake, of client contexts and of operator proofs are derived. Required on a node whose host is
    # not a loopback address; without it a loopback cluster uses a random key created with the cluster.
    # Give it in a file (`cluster_secret_file`) or the DYNASTORE_CLUSTER_SECRET environment variable
    # rather than on a command line.
    cluster_secret: str = ""
    cluster_secret_file: str = ""
    # During a rotation, a second secret accepted (never used to sign): first the new one on every node,
    # then the old one while the new one signs (see the README's Security section).
    cluster_secret_accepted: str = ""
    # The security state a new cluster starts in (users and permissions; `dynastore security ...`
    # changes it afterwards, cluster-wide).
    security_enabled: bool = False
    # Host names a node on a network address accepts in requests' Host header (comma-separated; empty:
    # any). A node on a loopback address accepts loopback names and addresses only.
    http_allowed_hosts: str = ""
    # Verified client credentials kept so that security costs little per request, and failed logins a
    # client address may make per minute before it is refused for the rest of that minute.
    auth_cache_count_max: int = 4096
    auth_failures_per_minute_max: int = 20

    # TLS for the HTTP API and (mutual) for inter-node traffic; on when both files are set. The CA file
    # verifies peers (default: the certificate itself, for a cluster sharing one self-signed certificate).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_file: str = ""

    # --- Partitioning and replication (Dynamo's Q, N, R, W) ----------------------------------------
    ring_size: int = 64
    n_val: int = 3
    r: int = 2
    w: int = 2
    allow_mult: bool = True
    last_write_wins: bool = False
    n_val_max: int = 7

    # --- Versions and objects ------------------------------------------------------------------------
    vclock_prune_entries_max: int = 10
    object_bytes_max: int = 1024 * 1024
    siblings_max: int = 100
    # All siblings of one key together (key_bytes_max bounds a key's name): a write that would take
    # them past it is refused with 413. Concurrent writers may still merge past it; see the README.
    key_siblings_bytes_max: int = 16 * 1024 * 1024
    context_extra_dots_max: int = 16
    key_bytes_max: int = 4096
    bucket_bytes_max: int = 512
    meta_bytes_max: int = 64 * 1024
    # Bucket types a cluster may hold (each is gossiped to every node).
    bucket_types_max: int = 256

    # --- Data types (core/crdt.py): what one key of a datatype bucket may hold ------------------------
    dt_set_elements_max: int = 10_000
    dt_map_fields_max: int = 1_000
    dt_depth_max: int = 4
    dt_element_bytes_max: int = 64 * 1024
    dt_deferred_max: int = 64

    # --- Requests ------------------------------------------------------------------------------------
    request_timeout_ms: int = 5000
    requests_inflight_max: int = 20_000
    coordinator_forward_retries_max: int = 2
    # A write whose context names another replica of the key as the fastest of the preceding read is
    # forwarded there even by a replica (the Dynamo paper's section 6.4: read-your-writes, and the
    # node that has what was read coordinates the write); false: a replica coordinates what it receives.
    write_to_fastest_replica: bool = True
    # The forwarded writes a node applied lately, remembered by write id so that a retry of one is not
    # applied twice (recentwrites.py); each entry is under 400 bytes.
    recent_writes_max: int = 20_000
    # An HTTP client connection with no request in progress that sends nothing for this long is closed.
    # Longer than any client keeps an idle pooled connection (aiohttp's server used the same 3630 s).
    http_idle_timeout_ms: int = 3_630_000
    # Open HTTP client connections a node keeps at once; one more is answered 503 and closed.
    http_connections_max: int = 2048
    # Request bodies held in memory at once over all HTTP connections (being received, or waiting with
    # their request): a body that would take them past this is answered 503 and its connection closed.
    http_body_buffer_bytes_max: int = 128 * 1024 * 1024
    # Riak's Protocol Buffers API (api/pb/): the largest frame a client may send (an object, its
    # metadata and the request's other fields; a bigger one is refused and the connection closed), the
    # open connections a node keeps at once (one more is refused with RpbErrorResp), and how long one
    # with no request in progress may send nothing before it is closed.
    pb_frame_bytes_max: int = 2 * 1024 * 1024
    # Request bytes held over all PB connections (frames being received or waiting their turn); a read
    # that takes them past this is refused with RpbErrorResp and its connection closed.
    pb_buffer_bytes_max: int = 128 * 1024 * 1024
    pb_connections_max: int = 2048
    pb_idle_timeout_ms: int = 3_630_000
    # With security on, a PB connection that has not authenticated (RpbAuthReq) is closed after this
    # long without a request, so that unauthenticated clients cannot hold every connection slot.
    pb_auth_timeout_ms: int = 30_000
    # A listing goes one page (a step of one partition, from one of its replicas) at a time: at most
    # this many keys or buckets, and this many bytes read from disk to find them (past the row that
    # reaches it), so no step holds an event loop for long. keys=true and buckets=true gather the
    # whole listing in memory: past list_result_bytes_max of names they answer 503 (streams do not).
    list_page_keys_max: int = 1000
    list_page_bytes_max: int = 4 * 1024 * 1024
    list_result_bytes_max: int = 64 * 1024 * 1024
    # Secondary indexes (core/indexes.py) and links, per sibling: at most this many index entries (an
    # `X-Riak-Index-NAME_bin|_int` header may hold several values, comma-separated), names of at most
    # index_name_bytes_max bytes (suffix included), terms of at most index_term_bytes_max bytes (an
    # `_int` term is a signed 64-bit integer), and at most links_max links.
    index_entries_max: int = 256
    index_name_bytes_max: int = 128
    index_term_bytes_max: int = 1024
    links_max: int = 256
    # A 2i query is a coverage query (core/indexquery.py): each partition asked once, of one replica;
    # a replica that has not answered within index_replica_timeout_ms is replaced by another for its
    # partitions. A page is at most index_page_results_max results (max_results may ask for fewer);
    # what one replica reads for one request is bounded by index_scan_bytes_max (past the row that
    # reaches it, one per partition). A query without max_results and without stream=true gathers its
    # pages in memory: past index_result_bytes_max of results it answers 503 (a stream does not).
    index_replica_timeout_ms: int = 2000
    index_page_results_max: int = 1000
    index_scan_bytes_max: int = 1024 * 1024
    index_result_bytes_max: int = 64 * 1024 * 1024

    # --- Storage ---------------------------------------------------------------------------------------
    storage_engine: str = "lmdb"
    # false: buffered writes (the Dynamo paper's section 6.1): a write's coordinator asks one replica
    # (itself when it holds a copy), or dw of them, to sync before acknowledging, the others to
    # acknowledge once written; dw then counts synced copies and defaults to 1 (coordination.py).
    durable: bool = True
    # In buffered mode (durable = false) batches are synced this often: the most a machine crash loses.
    buffered_sync_interval_ms: int = 1000
    lmdb_map_size_bytes: int = 64 * 1024**3
    # A node never reuses a version counter: it reserves counters in blocks and persists the block end.
    counter_lease_count: int = 10_000
    # Keys whose local copy held versions of this node's current actor and was deleted (a hint once
    # delivered, a stray once handed off, a reaped tombstone) are remembered, with the newest such
    # counter, so the node never writes them again under that actor without knowing those versions;
    # past this many bytes of keys the node takes a new actor instead (see coordination.py).
    forgotten_dots_bytes_max: int = 4 * 1024 * 1024

    # Every stored copy is re-read (its checksum verified) once per this interval, in steps of at most
    # scrub_batch_bytes_max admitted by the background controller (see core/scrub.py).
    scrub_interval_ms: int = 24 * 3_600_000
    scrub_batch_bytes_max: int = 4 * 1024 * 1024

    # Writes are refused (they go to other replicas) once what the disk can take falls below this;
    # deletes still go into the reserve down to a quarter of it. Space is measured this often.
    storage_reserve_bytes: int = 128 * 1024 * 1024
    storage_check_interval_ms: int = 1000

    # --- Deletes ---------------------------------------------------------------------------------------
    tombstone_grace_ms: int = 60_000
    reap_interval_ms: int = 10_000
    reap_batch_max: int = 200

    # --- Hinted handoff --------------------------------------------------------------------------------
    # A fallback refuses hinted writes past either bound (the write may then fail; never dropped).
    hints_max: int = 1_000_000
    hints_bytes_max: int = 4 * 1024**3
    hint_scan_interval_ms: int = 1000
    hint_batch_max: int = 200
    hint_batch_bytes_max: int = 4 * 1024 * 1024

    # --- Membership, gossip and failure detection ------------------------------------------------------
    gossip_interval_ms: int = 1000
    heartbeat_interval_ms: int = 1000
    # How long a new node started with seeds keeps trying while none of them answers (nodes started
    # together come up in any order); then it stops with an error. A seed that answers and refuses it
    # (another cluster, another secret) stops it at once.
    seed_join_timeout_ms: int = 120_000
    phi_threshold: float = 8.0
    phi_window_count: int = 100
    phi_min_std_dev_ms: int = 200
    phi_acceptable_pause_ms: int = 1000
    # A peer that refused a connection is retried after this long even if nothing else says it is up.
    unreachable_retry_ms: int = 1000

    # --- Ownership handoff ------------------------------------------------------------------------------
    handoff_batch_max: int = 500
    handoff_batch_bytes_max: int = 4 * 1024 * 1024
    handoff_concurrency_max: int = 2
    handoff_retry_ms: int = 2000
    # Pause between two batches of one transfer (the throttle), and how often strays are looked for.
    handoff_pause_ms: int = 10
    stray_scan_interval_ms: int = 2000

    # --- Anti-entropy -----------------------------------------------------------------------------------
    anti_entropy_enabled: bool = True
    anti_entropy_interval_ms: int = 30_000
    anti_entropy_segments_count: int = 1024
    anti_entropy_keys_batch_max: int = 100
    # The objects one step of an exchange carries, in bytes (past the object that reaches it).
    anti_entropy_batch_bytes_max: int = 4 * 1024 * 1024
    anti_entropy_rebuild_interval_ms: int = 3_600_000
    # The keys one tick of tree building or index verification reads (index entries, data keys; the
    # data also at most anti_entropy_batch_bytes_max): the node answers its clients between ticks.
    anti_entropy_verify_batch_keys_max: int = 1000

    # --- Background work controller ---------------------------------------------------------------------
    background_latency_target_ms: float = 50.0
    background_window_ms: int = 10_000

    # --- Read repair -------------------------------------------------------------------------------------
    read_repair_enabled: bool = True

    # --- Network limits ------------------------------------------------------------------------------------
    # A peer frame; a larger message (a key whose siblings add up to more) travels as fragments, put
    # back together up to peer_message_bytes_max, with at most peer_reassembly_bytes_max held at once
    # over all links.
    frame_bytes_max: int = 4 * 1024 * 1024
    peer_message_bytes_max: int = 256 * 1024 * 1024
    peer_reassembly_bytes_max: int = 256 * 1024 * 1024
    # What waits to be written to one peer, in messages and in bytes (one larger message still goes).
    peer_queue_frames_max: int = 20_000
    peer_queue_bytes_max: int = 64 * 1024 * 1024
    # A peer link or connection that carries nothing for this long is closed (members' never are).
    peer_idle_timeout_ms: int = 300_000
    # Connections other nodes (or anyone) open to this node's peer port, held at once; one more is reset.
    peer_connections_max: int = 1024
    connect_timeout_ms: int = 2000

    # --- Test-only switches (never set them in production) -------------------------------------------------
    # Used by the simulator to prove that its checkers catch a broken build.
    hinted_handoff_enabled: bool = True

    def __post_init__(self) -> None:
        _validate(self)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def with_overrides(self, pairs: Iterable[str]) -> Settings:
        """Apply `name=value` strings as given on the command line."""
        changes: dict[str, Any] = {}
        for pair in pairs:
            name, sep, raw = pair.partition("=")
            name = name.strip()
            if not sep:
                raise SettingsError(f"--set expects name=value, got {pair!r}")
            changes[name] = parse_value(name, raw.strip())
        return self.replace(**changes)

    def with_mapping(self, values: Mapping[str, Any]) -> Settings:
        changes: dict[str, Any] = {}
        for name, value in values.items():
            if isinstance(value, str):
                changes[name] = parse_value(name, value)
            else:
                changes[name] = _coerce(name, value)
        return self.replace(**changes)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_FIELD_TYPES: dict[str, str] = {f.name: str(f.type) for f in fields(Settings)}


def setting_names() -> list[str]:
    return sorted(_FIELD_TYPES)


def parse_value(name: str, raw: str) -> Any:
    kind = _FIELD_TYPES.get(name)
    if kind is None:
        raise SettingsError(f"unknown setting {name!r}")
    try:
        if kind == "bool":
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw.replace("_", ""))
        if kind == "float":
            return float(raw)
    except ValueError:
        raise SettingsError(f"setting {name} expects {kind}, got {raw!r}") from None
    return raw


def _coerce(name: str, value: Any) -> Any:
    kind = _FIELD_TYPES.get(name)
    if kind is None:
        raise SettingsError(f"unknown setting {name!r}")
    expected: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str}
    want = expected[kind]
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind == "int" and isinstance(value, bool):
        raise SettingsError(f"setting {name} expects int, got {value!r}")
    if not isinstance(value, want):
        raise SettingsError(f"setting {name} expects {kind}, got {value!r}")
    return value


def load_file(path: Path, base: Settings | None = None) -> Settings:
    """Read a TOML config file whose top-level keys are setting names."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"cannot read config {path}: {exc}") from None
    return (base or Settings()).with_mapping(data)


def _validate(s: Settings) -> None:
    problems = validation_problems(s)
    if problems:
        raise SettingsError(problems[0])


def validation_problems(s: Settings) -> list[str]:
    """Every rule these settings break, each naming the setting (empty when they are valid)."""
    problems: list[str] = []

    def need(cond: bool, msg: str) -> None:
        if not cond:
            problems.append(msg)

    need(s.ring_size >= 1 and s.ring_size & (s.ring_size - 1) == 0, "ring_size must be a power of two")
    need(s.ring_size <= 1 << 16, "ring_size must be at most 65536")
    need(1 <= s.n_val <= s.n_val_max, f"n_val must be between 1 and n_val_max ({s.n_val_max})")
    need(1 <= s.r <= s.n_val, "r must be between 1 and n_val")
    need(1 <= s.w <= s.n_val, "w must be between 1 and n_val")
    need(s.vclock_prune_entries_max >= 1, "vclock_prune_entries_max must be positive")
    need(s.object_bytes_max >= 1, "object_bytes_max must be positive")
    need(s.siblings_max >= 1, "siblings_max must be positive")
    need(s.request_timeout_ms >= 1, "request_timeout_ms must be positive")
    need(s.http_idle_timeout_ms >= 1, "http_idle_timeout_ms must be positive")
    need(s.http_connections_max >= 1, "http_connections_max must be positive")
    need(s.pb_connections_max >= 1, "pb_connections_max must be positive")
    need(s.pb_idle_timeout_ms >= 1, "pb_idle_timeout_ms must be positive")
    need(s.pb_auth_timeout_ms >= 1, "pb_auth_timeout_ms must be positive")
    need(s.pb_buffer_bytes_max >= s.pb_frame_bytes_max, "pb_buffer_bytes_max must hold one frame (pb_frame_bytes_max)")
    need(
        s.pb_frame_bytes_max >= s.object_bytes_max + s.meta_bytes_max + 64 * 1024,
        "pb_frame_bytes_max must hold one object with its metadata (object_bytes_max + meta_bytes_max + 64 KiB)",
    )
    need(s.peer_connections_max >= 1, "peer_connections_max must be positive")
    need(s.storage_engine in ("lmdb", "sqlite", "memory"), "storage_engine must be lmdb, sqlite or memory")
    need(s.counter_lease_count >= 1, "counter_lease_count must be positive")
    need(s.gossip_interval_ms >= 1, "gossip_interval_ms must be positive")
    need(s.heartbeat_interval_ms >= 1, "heartbeat_interval_ms must be positive")
    need(s.seed_join_timeout_ms >= 1, "seed_join_timeout_ms must be positive")
    need(s.phi_threshold > 0, "phi_threshold must be positive")
    need(s.anti_entropy_segments_count >= 1, "anti_entropy_segments_count must be positive")
    need(s.anti_entropy_interval_ms >= 1, "anti_entropy_interval_ms must be positive")
    need(s.frame_bytes_max >= 64 * 1024, "frame_bytes_max must be at least 64 KiB")
    need(
        s.peer_message_bytes_max >= s.siblings_max * (s.object_bytes_max + s.meta_bytes_max) + s.frame_bytes_max,
        "peer_message_bytes_max must hold a key's siblings at their limits (siblings_max x object_bytes_max)",
    )
    need(s.peer_idle_timeout_ms >= 1, "peer_idle_timeout_ms must be positive")
    need(s.peer_reassembly_bytes_max >= s.peer_message_bytes_max, "peer_reassembly_bytes_max must hold one message")
    need(s.key_siblings_bytes_max >= s.object_bytes_max, "key_siblings_bytes_max must hold one object")
    need(
        s.http_body_buffer_bytes_max >= s.object_bytes_max + 64 * 1024,
        "http_body_buffer_bytes_max must hold one request body (object_bytes_max and 64 KiB)",
    )
    for name in (
        "list_page_keys_max",
        "list_page_bytes_max",
        "list_result_bytes_max",
        "index_name_bytes_max",
        "index_term_bytes_max",
        "index_replica_timeout_ms",
        "index_page_results_max",
        "index_scan_bytes_max",
        "index_result_bytes_max",
        "anti_entropy_batch_bytes_max",
        "anti_entropy_verify_batch_keys_max",
        "scrub_interval_ms",
        "scrub_batch_bytes_max",
        "storage_check_interval_ms",
    ):
        need(getattr(s, name) >= 1, f"{name} must be positive")
    need(s.index_name_bytes_max <= 255, "index_name_bytes_max must be at most 255 (its length is one byte)")
    need(
        s.index_scan_bytes_max <= s.peer_message_bytes_max // 2,
        "index_scan_bytes_max must be at most half of peer_message_bytes_max (a replica's answer is one message)",
    )
    need(s.hints_max >= 0, "hints_max must not be negative")
    need(s.storage_reserve_bytes >= 0, "storage_reserve_bytes must not be negative")
    need(s.tombstone_grace_ms >= 0, "tombstone_grace_ms must not be negative")
    for name, value in s.as_dict().items():
        if isinstance(value, int) and not isinstance(value, bool) and name.endswith(("_max", "_count")):
            need(value >= 0, f"{name} must not be negative")
    return problems


DEFAULTS = Settings()


# --- The config file, the environment, and the node's own options ------------------------------------------

ENV_PREFIX = "DYNASTORE_"
NODE_ENV_PREFIX = "DYNASTORE_NODE_"
NODE_TABLE = "node"

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
WEIGHT_MAX = 1000


@dataclass(frozen=True, slots=True)
class NodeOptions:
    """What a node process is told besides its settings: who it is, where it listens and what it says
    (the `[node]` table of the config file, `DYNASTORE_NODE_*` variables and the `node` command's flags).

    `host` is the address bound (0.0.0.0 for every interface); `advertise_host` the one peers and
    clients are told (empty: `host`). `data_dir` and `name` have no default: a node needs both.
    """

    name: str = ""
    host: str = "127.0.0.1"
    advertise_host: str = ""
    http_port: int = 8098
    peer_port: int = 9000
    # Riak's Protocol Buffers API; 0 serves none.
    pb_port: int = 8087
    data_dir: str = ""
    seeds: tuple[str, ...] = ()
    weight: int = 1
    log_level: str = "info"
    log_format: str = "text"

    def replace(self, **changes: Any) -> NodeOptions:
        return dataclasses.replace(self, **changes)


NODE_OPTION_NAMES = tuple(f.name for f in fields(NodeOptions))
# The other commands' variables: not settings, so never read as one.
_OTHER_VARIABLES = ("ca", "user", "password")
assert not any(name.startswith(NODE_TABLE + "_") or name in _OTHER_VARIABLES for name in _FIELD_TYPES), (
    "a setting's name would clash with a DYNASTORE_NODE_* or another command's variable"
)


def env_variable(name: str) -> str:
    """The environment variable of a setting or (by its name in NodeOptions) of a node option."""
    prefix = NODE_ENV_PREFIX if name in NODE_OPTION_NAMES and name not in _FIELD_TYPES else ENV_PREFIX
    return prefix + name.upper()


def parse_address(text: str, what: str) -> tuple[str, int]:
    """`host:port` as (host, port); SettingsError naming `what` otherwise."""
    host, _, port = text.strip().rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"{what} must be host:port, got {text!r}")
    return host, int(port)


def parse_node_option(name: str, value: Any) -> Any:
    """A node option's value from TOML (typed) or text (a flag, a variable); SettingsError if bad."""
    if name not in NODE_OPTION_NAMES:
        raise SettingsError(f"unknown node option {name!r} (known: {', '.join(NODE_OPTION_NAMES)})")
    if name in ("http_port", "peer_port", "pb_port", "weight"):
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if not isinstance(value, int) or isinstance(value, bool):
            raise SettingsError(f"{name} expects an integer, got {value!r}")
        low, high = (1, WEIGHT_MAX) if name == "weight" else (0 if name == "pb_port" else 1, 65535)
        if not low <= value <= high:
            raise SettingsError(f"{name} must be from {low} to {high}, got {value}")
        return value
    if name == "seeds":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise SettingsError(f"seeds expects a list of host:port strings, got {value!r}")
        seeds = tuple(i.strip() for i in items if i.strip())
        for seed in seeds:
            parse_address(seed, "a seed")
        return seeds
    if not isinstance(value, str):
        raise SettingsError(f"{name} expects a string, got {value!r}")
    if name in ("log_level", "log_format"):
        allowed = LOG_LEVELS if name == "log_level" else LOG_FORMATS
        if value.lower() not in allowed:
            raise SettingsError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        return value.lower()
    if name in ("name", "host") and not value.strip():
        raise SettingsError(f"{name} must not be empty")
    return value.strip()


@dataclass(frozen=True, slots=True)
class Layer:
    """One source of configuration: setting values and node options, already parsed, and the problems
    found reading it (each naming the key or variable)."""

    settings: dict[str, Any]
    node: dict[str, Any]
    problems: list[str]

    def raise_problems(self) -> None:
        if self.problems:
            raise SettingsError("; ".join(self.problems))


def read_config(path: Path) -> Layer:
    """A TOML config file: top-level keys are settings, the `[node]` table holds node options."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return Layer({}, {}, [f"cannot read config {path}: {exc}"])
    return config_layer(data)


def config_layer(data: Mapping[str, Any]) -> Layer:
    settings: dict[str, Any] = {}
    node: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in data.items():
        if key == NODE_TABLE:
            if not isinstance(value, dict):
                problems.append(f"[{NODE_TABLE}] must be a table of node options")
                continue
            for name, option in value.items():
                try:
                    node[name] = parse_node_option(name, option)
                except SettingsError as exc:
                    problems.append(f"[{NODE_TABLE}] {name}: {exc}")
            continue
        try:
            settings[key] = parse_value(key, value) if isinstance(value, str) else _coerce(key, value)
        except SettingsError as exc:
            hint = f" (a node option? put it in the [{NODE_TABLE}] table)" if key in NODE_OPTION_NAMES else ""
            problems.append(f"{key}: {exc}{hint}")
    return Layer(settings, node, problems)


def environment_layer(environ: Mapping[str, str]) -> Layer:
    """The settings and node options named by DYNASTORE_* variables of `environ` (handed in: this
    module never reads the environment). A variable naming neither is left alone."""
    settings: dict[str, Any] = {}
    node: dict[str, Any] = {}
    problems: list[str] = []
    for variable in sorted(environ):
        if not variable.startswith(ENV_PREFIX):
            continue
        raw = environ[variable]
        if variable.startswith(NODE_ENV_PREFIX):
            name = variable[len(NODE_ENV_PREFIX) :].lower()
            if name in NODE_OPTION_NAMES:
                try:
                    node[name] = parse_node_option(name, raw)
                except SettingsError as exc:
                    problems.append(f"{variable}: {exc}")
            continue
        name = variable[len(ENV_PREFIX) :].lower()
        if name in _FIELD_TYPES:
            try:
                settings[name] = parse_value(name, raw.strip())
            except SettingsError as exc:
                problems.append(f"{variable}: {exc}")
    return Layer(settings, node, problems)


def overrides_layer(pairs: Iterable[str]) -> Layer:
    """`--set name=value` strings as a layer."""
    settings: dict[str, Any] = {}
    problems: list[str] = []
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        try:
            if not sep:
                raise SettingsError(f"--set expects name=value, got {pair!r}")
            settings[name] = parse_value(name, raw.strip())
        except SettingsError as exc:
            problems.append(str(exc))
    return Layer(settings, {}, problems)


def problems_of(*layers: Layer) -> list[str]:
    """Every problem of these layers together (lowest precedence first): each layer's own, then every
    rule the combined settings break."""
    problems = [p for layer in layers for p in layer.problems]
    if problems:
        return problems
    values: dict[str, Any] = {}
    for layer in layers:
        values.update(layer.settings)
    # All layers at once: one layer alone may break a rule (r above n_val) that another mends.
    return validation_problems(_unchecked(values))


def combine(*layers: Layer) -> tuple[Settings, NodeOptions]:
    """Settings and node options from layers given lowest precedence first (file, environment, flags)
    over the defaults; SettingsError with every problem found."""
    problems = problems_of(*layers)
    if problems:
        raise SettingsError("; ".join(problems))
    values: dict[str, Any] = {}
    node: dict[str, Any] = {}
    for layer in layers:
        values.update(layer.settings)
        node.update(layer.node)
    return Settings(**values), NodeOptions(**node)


def _unchecked(values: Mapping[str, Any]) -> Settings:
    """Settings with these values and no validation, so that every rule they break can be listed."""
    s = object.__new__(Settings)
    for f in fields(Settings):
        object.__setattr__(s, f.name, values.get(f.name, f.default))
    return s
