"""Node addresses as a user types them (`--node 127.0.0.1:8098`, `--url node1`): made into the URL the
clients use. Pure: no I/O, and light to import (every command checks its --node before anything else).
"""

from __future__ import annotations

from urllib.parse import urlsplit

DEFAULT_HTTP_PORT = 8098


def node_url(text: str, tls: bool = False) -> str:
    """The URL of a node named by `text`: a URL (http:// or https://), or host[:port] (127.0.0.1:8098,
    localhost, node1, [::1]:8098), which gets https:// when `tls` (a CA is given) and http:// otherwise,
    and port 8098 when it names none. Raises ValueError, saying why, for anything else."""
    text = text.strip()
    if "://" not in text:
        text = ("https://" if tls else "http://") + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{parts.scheme}:// is not a node's address: use http://, https:// or host:port")
    if parts.query or parts.fragment or parts.username is not None or parts.path.strip("/"):
        raise ValueError("a node's address is [http[s]://]host[:port] (no user, path, query or fragment)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port must be a number from 1 to 65535") from None
    host = parts.hostname
    if not host or any(c.isspace() for c in host) or port == 0:
        raise ValueError("a node's address is [http[s]://]host[:port], such as 127.0.0.1:8098")
    netloc = parts.netloc if port is not None else f"{parts.netloc}:{DEFAULT_HTTP_PORT}"
    return f"{parts.scheme}://{netloc}"
