"""The dashboard's files (HTML, CSS, JavaScript modules, SVG), served from the package itself.

Everything ships as package data under ``static/``: no CDN, no build step. The
files are read once, at start-up, into memory. They hold no data and no secret, so
they are served without the bearer token; every piece of data the page shows comes
from the JSON API, which the token guards (the page asks for the token and sends it
as ``Authorization: Bearer``). A strict Content-Security-Policy allows only the
page's own scripts and styles and requests to its own origin.
"""

from __future__ import annotations

from importlib import resources
from typing import Final

#: The files served under ``/ui/`` and their media types (anything else is a 404).
MEDIA_TYPES: Final = {
    "app.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "fleet.js": "text/javascript; charset=utf-8",
    "members.js": "text/javascript; charset=utf-8",
    "history.js": "text/javascript; charset=utf-8",
    "topology.js": "text/javascript; charset=utf-8",
    "table.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
INDEX: Final = "index.html"
#: Placeholder in ``index.html`` replaced by ``bearer`` or ``none``: whether to ask for a token.
AUTH_MARK: Final = "{{auth}}"
#: Headers of every dashboard file.
HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def load(auth: bool) -> dict[str, tuple[bytes, str]]:
    """Every file by name (``index.html`` included), with its media type."""
    root = resources.files("consumers.dashboard") / "static"
    files = {name: ((root / name).read_bytes(), media) for name, media in MEDIA_TYPES.items()}
    page = (root / INDEX).read_text("utf-8").replace(AUTH_MARK, "bearer" if auth else "none")
    files[INDEX] = (page.encode(), "text/html; charset=utf-8")
    return files


__all__ = ["HEADERS", "INDEX", "MEDIA_TYPES", "load"]
