"""The head of a request a guest sends its HTTP proxy, parsed strictly, and the answers the
proxy gives of its own. Pure: bytes in, a record or an HTTP answer out.

Two forms are taken: `CONNECT host:port` (a tunnel, for https and anything else over TCP) and
an absolute-form `METHOD http://host[:port]/path` (plain http), which goes to the origin in
origin form with the hop-by-hop and Proxy-* headers dropped and `Connection: close`: one
request per proxy connection, so that every request's destination is decided and audited. Of
such a request only its own body goes on (Content-Length bytes; a chunked body as it comes),
and the answer's head says `Connection: close` too, so that a client opens a new connection
(and gets a new decision) for its next request instead of sending it to this origin.

Parsed by hand rather than with h11 or http.server: the proxy needs only the request line
and the header names, must refuse rather than repair anything ambiguous (bare LF, folded
lines, both Content-Length and Transfer-Encoding: the stuff of request smuggling), and
forwards the body untouched, as a stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from http import HTTPStatus

from tryfleet.wire import MAX_EGRESS_REQUEST_CHARS

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_TARGET = re.compile(r"[\x21-\x7e]+\Z")
_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")
# dropped on the way to the origin (hop-by-hop, RFC 9110 7.6.1, and the proxy's own);
# Transfer-Encoding stays: the body goes through untouched, chunked or not
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "upgrade",
                        "host"})


class HeadError(ValueError):
    """A request head the proxy refuses: status and the message for the guest."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class ProxyRequest:
    """What a guest asked its proxy for. host is as written (not yet canonical); head is what
    goes to the origin for a forwarded request (b"" for a tunnel)."""

    method: str
    host: str
    port: int
    tunnel: bool
    head: bytes
    line: str  # method and target, for the audit ("CONNECT a.test:443", "GET http://a.test/")
    body_bytes: int | None = 0  # of the request's body; None: chunked, as long as it goes on


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """The head of an origin's answer as the guest gets it, and how much body follows (None:
    until the origin closes). interim: a 1xx answer; another head follows."""

    status: int
    head: bytes
    body_bytes: int | None
    interim: bool


def request_line(raw: bytes) -> str:
    """The method and target of a head as text for the audit, whatever the head holds:
    anything unprintable as '?', cut at MAX_EGRESS_REQUEST_CHARS."""
    first = raw.split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1")
    words = first.split(" ")
    text = " ".join(words[:2]) if len(words) == 3 and words[2].startswith("HTTP/") else first
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:MAX_EGRESS_REQUEST_CHARS]


def parse_head(raw: bytes) -> ProxyRequest:
    """A proxy request from its head (request line and headers, ending in an empty line).
    Raises HeadError (status 400) naming what is wrong."""
    if not raw.endswith(b"\r\n\r\n"):
        raise HeadError(400, "the request head must end with an empty line (CRLF CRLF)")
    lines = raw[:-4].decode("latin-1").split("\r\n")
    if any("\n" in line or "\r" in line for line in lines):
        raise HeadError(400, "lines of the request head must end with CRLF (a bare CR or LF "
                             "was found)")
    method, target, version = _request_line(lines[0])
    headers = [_header(line) for line in lines[1:]]
    names = [name.lower() for name, _ in headers]
    if "transfer-encoding" in names and "content-length" in names:
        raise HeadError(400, "a request must not carry both Content-Length and "
                             "Transfer-Encoding")
    lengths = {_length(v) for n, v in headers if n.lower() == "content-length"}
    if len(lengths) > 1 or None in lengths:
        raise HeadError(400, "the request's Content-Length is not one number")
    chunked = "transfer-encoding" in names
    if chunked and not _chunked_last(headers):
        raise HeadError(400, "a request's Transfer-Encoding must end with chunked")
    body = None if chunked else lengths.pop() if lengths else 0
    line = f"{method} {target}"[:MAX_EGRESS_REQUEST_CHARS]
    if method == "CONNECT":
        host, port = _authority(target, None)
        return ProxyRequest(method, host, port, True, b"", line)
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() != "http":
        if scheme.lower() == "https" and sep:
            raise HeadError(400, "for https, ask the proxy to CONNECT host:443 (a client "
                                 "does so by itself when HTTPS_PROXY is set)")
        raise HeadError(400, "the proxy takes CONNECT host:port or an absolute http URL "
                             f"(\"{method} http://host/path\"), not {target[:100]!r}")
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
              default=len(rest))
    authority, path = rest[:cut], rest[cut:].split("#", 1)[0]
    if not path.startswith("/"):
        path = "/" + path
    host, port = _authority(authority, 80)
    return ProxyRequest(method, host, port, False,
                        _origin_head(method, path, version, authority, headers), line, body)


def parse_response_head(raw: bytes, method: str) -> ResponseHead:
    """An origin's answer head (ending in an empty line) for a request of method, rewritten
    for the guest: hop-by-hop headers dropped, `Connection: close` added. Raises HeadError
    (status 502) when it is not an HTTP/1.x answer."""
    lines = raw[:-4].decode("latin-1").split("\r\n") if raw.endswith(b"\r\n\r\n") else []
    parts = lines[0].split(" ", 2) if lines else []
    if len(parts) < 2 or parts[0] not in ("HTTP/1.1", "HTTP/1.0") or not (
            parts[1].isascii() and parts[1].isdigit() and len(parts[1]) == 3):
        raise HeadError(502, "the destination's answer is not HTTP/1.x")
    status = int(parts[1])
    try:
        headers = [_header(line) for line in lines[1:]]
    except HeadError:
        raise HeadError(502, "the destination's answer has a malformed header") from None
    if 100 <= status < 200 and status != 101:
        return ResponseHead(status, raw, 0, True)
    names = {n.lower() for n, _ in headers}
    lengths = {_length(v) for n, v in headers if n.lower() == "content-length"}
    body: int | None = None  # until the origin closes: chunked, no length, or a bad one
    if method == "HEAD" or status in (101, 204, 304):
        body = None if status == 101 else 0
    elif "transfer-encoding" not in names and len(lengths) == 1:
        body = lengths.pop()
    kept = "".join(f"{n}: {v}\r\n" for n, v in headers if not _hop(n, headers))
    return ResponseHead(status, f"{lines[0]}\r\n{kept}Connection: close\r\n\r\n"
                        .encode("latin-1"), body, False)


def answer(status: int, text: str) -> bytes:
    """The proxy's own answer: status and a text/plain body, then the connection closes."""
    body = (text.rstrip("\n") + "\n").encode("utf-8", "replace")
    phrase = HTTPStatus(status).phrase
    return (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


def _request_line(line: str) -> tuple[str, str, str]:
    parts = line.split(" ")
    if len(parts) != 3:
        raise HeadError(400, "the request line must be \"METHOD TARGET HTTP/1.1\"")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise HeadError(400, f"{method[:40]!r} is not an HTTP method")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HeadError(400, f"{version[:40]!r} is not HTTP/1.1 or HTTP/1.0")
    if not _TARGET.match(target):
        raise HeadError(400, "the request target must be printable ASCII without spaces")
    return method, target, version


def _header(line: str) -> tuple[str, str]:
    name, sep, value = line.partition(":")
    if not sep or not _TOKEN.match(name):
        raise HeadError(400, f"{line[:60]!r} is not a header line (\"Name: value\"; folded "
                             "lines are refused)")
    value = value.strip(" \t")
    if not _VALUE.match(value):
        raise HeadError(400, f"header {name[:60]!r} holds a control character")
    return name, value


def _authority(text: str, default_port: int | None) -> tuple[str, int]:
    if "@" in text:
        raise HeadError(400, "user info (user:password@) in the proxy target is refused")
    if text.startswith("["):
        host, sep, after = text[1:].partition("]")
        if not sep or (after and not after.startswith(":")):
            raise HeadError(400, f"{text[:100]!r} is not host:port")
        port_text = after[1:] if after else None
    else:
        host, sep, port_text_ = text.rpartition(":")
        host, port_text = (host, port_text_) if sep else (text, None)
    if not host:
        raise HeadError(400, f"no host in {text[:100]!r}")
    if port_text is None:
        if default_port is None:
            raise HeadError(400, f"CONNECT needs host:port, got {text[:100]!r}")
        return host, default_port
    if not _PORT.match(port_text) or not 0 < int(port_text) < 65536:
        raise HeadError(400, f"the port in {text[:100]!r} must be a number from 1 to 65535")
    return host, int(port_text)


def _length(value: str) -> int | None:
    """A Content-Length's value, or None when it is not a number of at most 18 digits."""
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 18 else None


def _chunked_last(headers: list[tuple[str, str]]) -> bool:
    codings = [c.strip().lower() for n, v in headers if n.lower() == "transfer-encoding"
               for c in v.split(",")]
    return bool(codings) and codings[-1] == "chunked"


def _hop(name: str, headers: list[tuple[str, str]]) -> bool:
    """Whether a header stays on this hop: hop-by-hop, named in Connection, or Proxy-*."""
    low = name.lower()
    if low in HOP_BY_HOP or low.startswith("proxy-"):
        return True
    return low in {token.strip().lower() for n, v in headers if n.lower() == "connection"
                   for token in v.split(",")}


def _origin_head(method: str, path: str, version: str, authority: str,
                 headers: list[tuple[str, str]]) -> bytes:
    kept = [f"{n}: {v}\r\n" for n, v in headers if not _hop(n, headers)]
    return (f"{method} {path} {version}\r\nHost: {authority}\r\n{''.join(kept)}"
            "Connection: close\r\n\r\n").encode("latin-1")


__all__ = ["ESTABLISHED", "HOP_BY_HOP", "HeadError", "ProxyRequest", "ResponseHead", "answer",
           "parse_head", "parse_response_head", "request_line"]
