"""`GET /dashboard`: the operator's live page, served from static files shipped in the package.

The page is three files in `api/static/` (HTML, JavaScript, CSS; no build step, nothing fetched from
elsewhere). Its script polls this node's own JSON routes (`/admin/status`, `/stats`, `/ring`) once a
second and draws everything itself, so the browser talks to one origin only and, with security on,
sends the credentials it was asked for when it loaded the page.

Only the files named in `FILES` are served, read once into memory: a path never reaches the file
system, so no path can name anything else. The guard (auth.need_of) already asks `dynastore.status`
for every `/dashboard...` path.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from dynastore.api.answers import text
from dynastore.api.server import Request, Response

# URL name under /dashboard/ -> (file in api/static, Content-Type). `None` is /dashboard itself.
FILES: dict[str | None, tuple[str, str]] = {
    None: ("dashboard.html", "text/html; charset=utf-8"),
    "dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
# The files change only with the package, but a browser should pick up an upgrade at once: it may keep
# them, and asks again (cheaply, by ETag) each time.
CACHE_CONTROL = "no-cache"
# The page runs nothing but its own script and reaches nothing but this node: a browser enforces it.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
METHODS = ("GET", "HEAD")


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


_loaded: dict[str | None, StaticFile] | None = None


def files() -> dict[str | None, StaticFile]:
    """Every served file, read from the package on first use and kept."""
    global _loaded
    if _loaded is None:
        folder = resources.files("dynastore.api").joinpath("static")
        loaded = {}
        for name, (filename, content_type) in FILES.items():
            body = folder.joinpath(filename).read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            loaded[name] = StaticFile(body, content_type, etag)
        _loaded = loaded
    return _loaded


def handle(request: Request, rest: list[bytes]) -> Response:
    """`/dashboard` and `/dashboard/<file>`; anything else under it is a 404."""
    if len(rest) > 1:
        return text(404, "Not Found")
    name = rest[0].decode("utf-8", "replace") if rest else None
    found = files().get(name)
    if found is None:
        return text(404, "Not Found")
    if request.method not in METHODS:
        return text(405, "Method Not Allowed", {"Allow": ", ".join(METHODS)})
    headers = {"Cache-Control": CACHE_CONTROL, "ETag": found.etag, **SECURITY_HEADERS}
    if found.etag in (tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")):
        return Response(status=304, headers=headers)
    return Response(body=found.body, headers={"Content-Type": found.content_type, **headers})
