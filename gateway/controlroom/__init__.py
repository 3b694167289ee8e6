"""The control room: one page at `/` for the humans in charge of a fleet, with its script and
style at /controlroom/..., all shipped in this package (static/), no build step, nothing
fetched from elsewhere: it works offline.

The page signs in with an API key (kept in the tab's sessionStorage, sent as a header, never
in a URL) and reads the fleet through the /v1 API like any client, so it shows only what that
key may see; /v1/live (routes/live.py) streams its updates. It is served as to a hostile web:
a Content-Security-Policy that lets it load and reach nothing but this origin, run no inline
script or style and be framed by nobody; no MIME sniffing; no referrer. Everything it shows
from the API it inserts as text, never as markup.

These routes need no key (the page holds no data), are left out of /openapi.json and, like
/docs, out of the audit trail (auditing.UNAUDITED).
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from ..problems import not_found

router = APIRouter(include_in_schema=False)
PREFIX = "/controlroom/"
FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
         "icon.svg": "image/svg+xml"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
           "Cross-Origin-Opener-Policy": "same-origin",
           "Cross-Origin-Resource-Policy": "same-origin", "Cache-Control": "no-cache"}


def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def _answer(name: str, media_type: str) -> Response:
    return Response(_read(name), media_type=media_type, headers=HEADERS)


@router.get("/")
async def page() -> Response:
    return _answer("index.html", "text/html; charset=utf-8")


@router.get(PREFIX + "{name}")
async def asset(name: str) -> Response:
    media_type = FILES.get(name)
    if media_type is None:  # only the files named above: no path reaches anything else
        raise not_found(f"file {name[:64]!r} in the control room")
    return _answer(name, media_type)


__all__ = ["CSP", "FILES", "HEADERS", "PREFIX", "router"]
