"""The egress proxy's HTTP heads, parsed strictly: what a guest asks for and how an origin's
answer is passed back."""

import pytest

from tryfleet.nodeagent.egress.httphead import (
    HeadError,
    answer,
    parse_head,
    parse_response_head,
    request_line,
)


def test_a_connect_names_its_host_and_port_and_forwards_no_head():
    req = parse_head(b"CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n")
    assert (req.method, req.host, req.port, req.tunnel, req.head) == \
        ("CONNECT", "pypi.org", 443, True, b"")
    assert req.line == "CONNECT pypi.org:443"


@pytest.mark.parametrize(("head", "body"), [
    (b"GET http://a.test/ HTTP/1.1\r\n\r\n", 0),
    (b"POST http://a.test/ HTTP/1.1\r\nContent-Length: 12\r\n\r\n", 12),
    (b"POST http://a.test/ HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", None),
])
def test_a_forwarded_request_knows_how_much_body_follows(head, body):
    assert parse_head(head).body_bytes == body


@pytest.mark.parametrize(("target", "host", "port", "path"), [
    ("http://a.test", "a.test", 80, "/"),
    ("http://a.test:8080/x/y?q=1#frag", "a.test", 8080, "/x/y?q=1"),
    ("HTTP://A.test?q", "A.test", 80, "/?q"),
])
def test_an_absolute_url_goes_to_the_origin_in_origin_form(target, host, port, path):
    req = parse_head(f"GET {target} HTTP/1.0\r\nUser-Agent: t\r\n\r\n".encode())
    assert (req.host, req.port, req.tunnel) == (host, port, False)
    authority = target.split("://", 1)[1].split("/")[0].split("?")[0].split("#")[0]
    assert req.head == (f"GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: t\r\n"
                        "Connection: close\r\n\r\n").encode()


@pytest.mark.parametrize(("head", "says"), [
    (b"GET http://a.test/ HTTP/1.1\r\n", "empty line"),
    (b"GET http://a.test/ HTTP/2\r\n\r\n", "not HTTP/1.1"),
    (b"GET  http://a.test/ HTTP/1.1\r\n\r\n", "METHOD TARGET"),
    (b"G(T http://a.test/ HTTP/1.1\r\n\r\n", "not an HTTP method"),
    (b"GET http://a.test/\x01 HTTP/1.1\r\n\r\n", "printable ASCII"),
    (b"GET http://a.test/ HTTP/1.1\r\nX: a\x00b\r\n\r\n", "control character"),
    (b"GET http://a.test/ HTTP/1.1\r\nno colon\r\n\r\n", "not a header line"),
    (b"GET ftp://a.test/ HTTP/1.1\r\n\r\n", "absolute http URL"),
    (b"GET http://a.test:0/ HTTP/1.1\r\n\r\n", "1 to 65535"),
    (b"GET http://a.test:99999/ HTTP/1.1\r\n\r\n", "1 to 65535"),
    (b"GET http:///x HTTP/1.1\r\n\r\n", "no host"),
    (b"CONNECT [::1 HTTP/1.1\r\n\r\n", "not host:port"),
    (b"POST http://a.test/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
     "not one number"),
    (b"POST http://a.test/ HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
     "not one number"),
    (b"POST http://a.test/ HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "not one number"),
    (b"POST http://a.test/ HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
     "end with chunked"),
])
def test_a_malformed_head_is_refused_saying_what_is_wrong(head, says):
    with pytest.raises(HeadError, match=says) as err:
        parse_head(head)
    assert err.value.status == 400


def test_the_audit_line_of_any_head_is_printable_and_capped():
    assert request_line(b"GET http://a.test/x HTTP/1.1\r\nHost: a\r\n\r\n") == \
        "GET http://a.test/x"
    assert request_line(b"\x16\x03\x01\xff junk") == "???? junk"
    assert len(request_line(b"GET http://a.test/" + b"x" * 2000 + b" HTTP/1.1")) == 512


def test_an_answer_is_text_with_its_length_and_closes():
    assert answer(403, "tryfleet egress: no") == (
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 20\r\nConnection: close\r\n\r\ntryfleet egress: no\n")


def test_an_origins_answer_says_connection_close_and_how_much_body_follows():
    got = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive"
                              b", X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\nETag: e\r\n\r\n",
                              "GET")
    assert got.head == (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: e\r\n"
                        b"Connection: close\r\n\r\n")
    assert (got.status, got.body_bytes, got.interim) == (200, 5, False)


@pytest.mark.parametrize(("head", "method", "body", "interim"), [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "GET", None, False),
    (b"HTTP/1.0 200 OK\r\n\r\n", "GET", None, False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", "HEAD", 0, False),
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", "GET", 0, False),
    (b"HTTP/1.1 204 No Content\r\n\r\n", "DELETE", 0, False),
    (b"HTTP/1.1 100 Continue\r\n\r\n", "POST", 0, True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "GET", None, False),
])
def test_the_body_of_an_answer_follows_its_framing(head, method, body, interim):
    got = parse_response_head(head, method)
    assert (got.body_bytes, got.interim) == (body, interim)


@pytest.mark.parametrize("head", [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 2000 OK\r\n\r\n",
                                  b"HTTP/1.1 200 OK\r\n bad fold\r\n\r\n", b"HTTP/1.1 200"])
def test_an_origin_answer_that_is_not_http_is_a_502(head):
    with pytest.raises(HeadError) as err:
        parse_response_head(head, "GET")
    assert err.value.status == 502
