"""Bucket properties: their names, the defaults a bucket nobody configured has, and the check every
change must pass. One place, for the node that applies them and the API that resets them.

Pure: settings and dictionaries in, dictionaries and reasons out.
"""

from __future__ import annotations

from typing import Any

from dynastore.core import speculative
from dynastore.core.quorum import QuorumError, parse, resolve
from dynastore.settings import Settings

# The properties a bucket may set (Riak's names); the API ignores the rest of Riak's (see api/http.py).
# `rw` is the quorum of both halves of a delete that names neither r nor w (see quorum.delete_quorums).
# `speculative_retry` says when a read asks the replicas beyond the R it needs (speculative.py).
BUCKET_PROPS = ("n_val", "r", "w", "rw", "pr", "pw", "dw", "allow_mult", "last_write_wins", "speculative_retry")


def defaults(settings: Settings) -> dict[str, Any]:
    """The properties of a bucket nobody configured (from the node's settings), as a new dict."""
    s = settings
    quorum = s.n_val // 2 + 1
    return {
        "n_val": s.n_val,
        "r": "quorum" if s.r == quorum else s.r,
        "w": "quorum" if s.w == quorum else s.w,
        "rw": "quorum",
        "pr": 0,
        "pw": 0,
        # Buffered mode (durable=false) syncs one replica per write unless a write asks for more.
        "dw": "quorum" if s.durable else 1,
        "allow_mult": s.allow_mult,
        "last_write_wins": s.last_write_wins,
        "speculative_retry": speculative.DEFAULT,
    }


def keeps_one(props: dict[str, Any]) -> bool:
    """Whether a bucket with these properties keeps one value per key: last-write-wins, or allow_mult
    off (objects.py says how each resolves siblings)."""
    return bool(props["last_write_wins"]) or not bool(props["allow_mult"])


# No node's n_val_max setting reaches this: a stored n_val above it came from no honest node.
N_VAL_LIMIT = 64


def stored_problem(props: dict[str, Any]) -> str | None:
    """Why properties as a cluster state stores them (only those a bucket sets) cannot be any honest
    node's, whatever its settings (a gossiped state is checked with this), or None."""
    for name, value in props.items():
        if name not in BUCKET_PROPS:
            return f"unknown bucket property {name!r}"
        if name == "n_val":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= N_VAL_LIMIT:
                return f"n_val must be an integer from 1 to {N_VAL_LIMIT}"
        elif name in ("allow_mult", "last_write_wins"):
            if not isinstance(value, bool):
                return f"{name} must be true or false"
        elif name == "speculative_retry":
            if (reason := speculative.problem(value)) is not None:
                return reason
        else:
            try:
                parse(name, value)
            except QuorumError as exc:
                return str(exc)
    return None


def problem(props: dict[str, Any], settings: Settings) -> str | None:
    """Why a bucket's complete properties are unacceptable (a reason fit for a 400), or None."""
    n_val = props.get("n_val")
    if isinstance(n_val, bool) or not isinstance(n_val, int) or not 1 <= n_val <= settings.n_val_max:
        return f"n_val must be an integer from 1 to {settings.n_val_max}"
    # "default" stands for the node's own default (see NodeBase._props), which must fit this n_val too.
    fallback = defaults(settings)
    for name, minimum in (("r", 1), ("w", 1), ("rw", 1), ("pr", 0), ("pw", 0), ("dw", 0)):
        try:
            resolve(name, props.get(name), n_val, fallback[name], minimum)
        except QuorumError as exc:
            return str(exc)
    for name in ("allow_mult", "last_write_wins"):
        if not isinstance(props.get(name), bool):
            return f"{name} must be true or false"
    return speculative.problem(props.get("speculative_retry", speculative.DEFAULT))
