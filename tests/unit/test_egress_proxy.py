"""The egress proxy on real unix sockets, with origins on loopback (which only these tests'
address policy lets through): what it lets through, what it refuses and says so, what it
records, and that no guest takes it down."""

import grp
import os
import stat

import pytest
from prometheus_client import REGISTRY

from tests.unit.egresskit import Kit, Origin, echo, http_origin, read_all, read_head
from tests.waiting import until


@pytest.fixture
def kit():
    k = Kit()
    yield k
    k.close()


@pytest.fixture
def echo_origin():
    origin = Origin(echo)
    yield origin
    origin.close()


@pytest.fixture
def web():
    seen: list[bytes] = []
    origin = Origin(http_origin(seen))
    origin.seen = seen
    yield origin
    origin.close()


def connect_head(port, host="allowed.test"):
    return f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()


def test_an_allowed_connect_is_established_and_tunnels_bytes(kit, echo_origin):
    path = kit.attach("vm1", f"allowed.test:{echo_origin.port}")
    with kit.connect(path, connect_head(echo_origin.port)) as sock:
        assert read_head(sock) == b"HTTP/1.1 200 Connection established\r\n\r\n"
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
    [decision] = kit.of("decision")
    assert (decision.vm, decision.ids.iteration, decision.decision, decision.reason) == \
        ("vm1", "it-vm1", "allow", "allowlisted")
    assert (decision.host, decision.port, decision.address) == \
        ("allowed.test", echo_origin.port, "127.0.0.1")
    assert decision.request == f"CONNECT allowed.test:{echo_origin.port}"


def test_an_allowed_get_goes_to_the_origin_in_origin_form_without_proxy_headers(kit, web):
    path = kit.attach("vm1", f"allowed.test:{web.port}")
    got = kit.ask(path, (f"GET http://ALLOWED.test:{web.port}/x?y=1 HTTP/1.1\r\n"
                         "Host: wrong.test\r\nProxy-Authorization: Basic c2VjcmV0\r\n"
                         "Proxy-Connection: keep-alive\r\nConnection: keep-alive, X-Drop\r\n"
                         "X-Drop: 1\r\nAccept: */*\r\n\r\n").encode())
    assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"\r\n\r\nhello")
    [head] = web.seen
    assert head == (f"GET /x?y=1 HTTP/1.1\r\nHost: ALLOWED.test:{web.port}\r\n"
                    "Accept: */*\r\nConnection: close\r\n\r\n").encode()
    assert kit.of("decision")[0].request == f"GET http://ALLOWED.test:{web.port}/x?y=1"


def test_a_host_not_on_the_allowlist_is_refused_with_403_naming_the_allowlist(kit, web):
    path = kit.attach("vm1", f"allowed.test:{web.port}")
    got = kit.ask(path, f"GET http://other.test:{web.port}/ HTTP/1.1\r\n\r\n".encode())
    assert got.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert got.endswith(f"tryfleet egress: other.test:{web.port} is not on this sandbox's "
                        f"allowlist (allowed: allowed.test:{web.port})\n".encode())
    assert web.accepted == 0
    [ev] = kit.events
    assert (ev.decision, ev.reason, ev.address) == ("deny", "not-allowlisted", "")


def test_another_port_of_an_allowed_host_is_refused(kit, echo_origin):
    path = kit.attach("vm1", "allowed.test:1")
    got = kit.ask(path, connect_head(echo_origin.port))
    assert got.startswith(b"HTTP/1.1 403 ")
    assert echo_origin.accepted == 0


@pytest.mark.parametrize(("host", "address", "words", "kind"), [
    ("private.test", "10.0.0.5", "a private address", "private"),
    ("metadata.test", "169.254.169.254", "a cloud metadata address", "metadata"),
    ("own.test", "192.0.2.10", "an address of a fleet host", "own"),
    ("mixed.test", "10.0.0.6", "a private address", "private"),
])
def test_an_allowed_name_that_resolves_to_a_blocked_address_is_refused(
        kit, host, address, words, kind):
    path = kit.attach("vm1", f"{host}:80")
    got = kit.ask(path, f"GET http://{host}/ HTTP/1.1\r\n\r\n".encode())
    assert got.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert got.endswith(f"tryfleet egress: {host} resolves to {address}, {words}: "
                        "refused\n".encode())
    [ev] = kit.events
    assert (ev.decision, ev.reason, ev.address) == ("deny", f"blocked-address:{kind}", address)


def test_an_ip_address_is_never_allowed(kit, echo_origin):
    path = kit.attach("vm1", f"allowed.test:{echo_origin.port}")
    got = kit.ask(path, connect_head(echo_origin.port, host="127.0.0.1"))
    assert got.startswith(b"HTTP/1.1 403 ")
    assert echo_origin.accepted == 0


def test_a_name_that_does_not_resolve_is_answered_502(kit):
    path = kit.attach("vm1", "nowhere.test:80")
    got = kit.ask(path, b"GET http://nowhere.test/ HTTP/1.1\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b"nowhere.test does not resolve: Name or service not known" in got
    assert kit.lookups == ["nowhere.test"]
    assert [(e.decision, e.reason) for e in kit.events] == [("deny", "resolve-failed")]


def test_when_the_audit_fails_the_connection_is_refused_503_and_not_made(kit, echo_origin):
    path = kit.attach("vm1", f"allowed.test:{echo_origin.port}")
    kit.audit_down = True
    got = kit.ask(path, connect_head(echo_origin.port))
    assert got.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"egress audit unavailable" in got
    assert echo_origin.accepted == 0


@pytest.mark.parametrize(("head", "status"), [
    (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", b"400"),
    (b"GET /local HTTP/1.1\r\nHost: allowed.test\r\n\r\n", b"400"),
    (b"GET https://allowed.test/ HTTP/1.1\r\n\r\n", b"400"),
    (b"CONNECT allowed.test HTTP/1.1\r\n\r\n", b"400"),
    (b"GET http://allowed.test/ HTTP/1.1\nHost: x\n\n\r\n\r\n", b"400"),
    (b"GET http://allowed.test/ HTTP/1.1\r\n folded: x\r\n\r\n", b"400"),
    (b"POST http://allowed.test/ HTTP/1.1\r\nContent-Length: 1\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n", b"400"),
    (b"GET http://user:pw@allowed.test/ HTTP/1.1\r\n\r\n", b"400"),
    (b"GET http://allowed.test/ HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
])
def test_a_malformed_or_oversized_request_is_refused_and_the_proxy_serves_on(
        kit, web, head, status):
    path = kit.attach("vm1", "allowed.test:80", f"allowed.test:{web.port}")
    got = kit.ask(path, head)
    assert got.startswith(b"HTTP/1.1 " + status + b" ")
    assert [(e.decision, e.reason) for e in kit.events] == [("deny", "bad-request")]
    assert web.accepted == 0
    ok = kit.ask(path, f"GET http://allowed.test:{web.port}/ HTTP/1.1\r\n\r\n".encode())
    assert ok.endswith(b"hello")


def test_a_guest_that_sends_no_head_gets_408():
    k = Kit(head_timeout_s=0.2)
    try:
        path = k.attach("vm1", "allowed.test:80")
        assert k.ask(path, b"GET http://allowed.test/").startswith(b"HTTP/1.1 408 ")
    finally:
        k.close()


def test_a_vm_gets_at_most_its_connections_and_other_vms_are_not_affected(echo_origin):
    k = Kit(max_connections_per_vm=2)
    try:
        rule = f"allowed.test:{echo_origin.port}"
        path, other = k.attach("vm1", rule), k.attach("vm2", rule)
        open_ = [k.connect(path, connect_head(echo_origin.port)) for _ in range(2)]
        assert all(read_head(s).startswith(b"HTTP/1.1 200") for s in open_)
        got = k.ask(path, connect_head(echo_origin.port))
        assert got.startswith(b"HTTP/1.1 429 ")
        assert b"2 proxy connections open" in got
        with k.connect(other, connect_head(echo_origin.port)) as sock:
            assert read_head(sock).startswith(b"HTTP/1.1 200")
        assert k.of("decision")[-2].reason == "too-many-connections"
        for s in open_:
            s.close()
    finally:
        k.close()


def test_detach_closes_live_tunnels_removes_the_socket_and_returns_totals(kit, echo_origin):
    path = kit.attach("vm1", f"allowed.test:{echo_origin.port}", "x.test:1")
    kit.ask(path, connect_head(1, host="x.test"))  # denied: resolves nowhere
    with kit.connect(path, connect_head(echo_origin.port)) as sock:
        read_head(sock)
        sock.sendall(b"abc")
        assert sock.recv(3) == b"abc"
        totals = kit.proxy.detach("vm1")
        assert read_all(sock) == b""  # closed by the proxy
    assert (totals.bytes_up, totals.bytes_down, totals.allowed, totals.denied) == (3, 3, 1, 1)
    assert not path.exists()
    [end] = kit.of("end")
    assert (end.reason, end.bytes_up, end.bytes_down) == ("detached", 3, 3)
    assert kit.proxy.detach("vm1") == type(totals)()


def test_the_end_event_counts_the_bytes_both_ways_and_the_duration(kit):
    def sink(sock):
        got = 0
        while got < 1000:
            got += len(sock.recv(65536))
        sock.sendall(b"d" * 3000)

    origin = Origin(sink)
    try:
        path = kit.attach("vm1", f"allowed.test:{origin.port}")
        with kit.connect(path, connect_head(origin.port)) as sock:
            read_head(sock)
            sock.sendall(b"u" * 1000)
            assert len(read_all(sock)) == 3000
        [end] = until(lambda: kit.of("end"))
        assert (end.kind, end.decision, end.reason) == ("end", "allow", "closed")
        assert (end.bytes_up, end.bytes_down, end.address) == (1000, 3000, "127.0.0.1")
        assert end.duration_s > 0 and end.request == f"CONNECT allowed.test:{origin.port}"
    finally:
        origin.close()


def test_an_idle_tunnel_is_closed(echo_origin):
    k = Kit(idle_timeout_s=0.3)
    try:
        path = k.attach("vm1", f"allowed.test:{echo_origin.port}")
        with k.connect(path, connect_head(echo_origin.port)) as sock:
            read_head(sock)
            assert read_all(sock) == b""
        assert until(lambda: k.of("end"))[0].reason == "idle-timeout"
    finally:
        k.close()


def test_decisions_bytes_and_open_connections_are_in_the_metrics(kit, echo_origin):
    def value(name, **labels):
        return REGISTRY.get_sample_value(name, {"host": "egress-test", **labels}) or 0

    allowed = value("tryfleet_egress_decisions_total", decision="allow", reason="allowlisted")
    denied = value("tryfleet_egress_decisions_total", decision="deny", reason="not-allowlisted")
    up = value("tryfleet_egress_bytes_total", direction="up")
    path = kit.attach("vm1", f"allowed.test:{echo_origin.port}")
    kit.ask(path, connect_head(1))
    with kit.connect(path, connect_head(echo_origin.port)) as sock:
        read_head(sock)
        assert value("tryfleet_egress_connections") == 1
        sock.sendall(b"12345")
        sock.recv(5)
    assert value("tryfleet_egress_decisions_total", decision="allow",
                 reason="allowlisted") == allowed + 1
    assert value("tryfleet_egress_decisions_total", decision="deny",
                 reason="not-allowlisted") == denied + 1
    assert value("tryfleet_egress_bytes_total", direction="up") == up + 5
    until(lambda: value("tryfleet_egress_connections") == 0)


def test_the_socket_is_open_to_qemus_group_only_or_to_all_without_it(kit):
    path = kit.attach("vm1", "allowed.test:80")
    st = os.stat(path)
    try:
        gid = grp.getgrnam("libvirt-qemu").gr_gid
    except KeyError:
        gid = None
    if gid is not None and os.geteuid() == 0:
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, gid)
    else:
        assert stat.S_IMODE(st.st_mode) == 0o666


def test_a_vm_cannot_be_attached_twice(kit):
    from tryfleet.errors import BadRequest

    kit.attach("vm1", "allowed.test:80")
    with pytest.raises(BadRequest, match="already attached"):
        kit.attach("vm1", "allowed.test:80")


def test_a_name_not_on_the_allowlist_is_never_resolved(kit):
    path = kit.attach("vm1", "allowed.test:80")
    assert kit.ask(path, b"CONNECT secret-data.exfil.test:443 HTTP/1.1\r\n\r\n").startswith(
        b"HTTP/1.1 403 ")
    assert kit.lookups == []


def test_an_allowed_destination_that_refuses_the_connection_is_answered_502(kit):
    closed = Origin(echo)
    port = closed.port
    closed.close()  # nothing listens there now
    path = kit.attach("vm1", f"allowed.test:{port}")
    got = kit.ask(path, connect_head(port))
    assert got.startswith(b"HTTP/1.1 502 ")
    assert f"could not connect to allowed.test:{port} (127.0.0.1)".encode() in got
    assert [(e.kind, e.reason) for e in until(lambda: len(kit.events) == 2 and kit.events)] \
        == [("decision", "allowlisted"), ("end", "connect-failed")]


def test_a_request_body_streams_to_the_origin(kit):
    def count_body(sock):
        head = read_head(sock)
        assert head.startswith(b"POST /up HTTP/1.1\r\n")
        body = b""
        while len(body) < 100_000:
            body += sock.recv(65536)
        reply = f"got {len(body)}".encode()
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(reply), reply))

    origin = Origin(count_body)
    try:
        path = kit.attach("vm1", f"allowed.test:{origin.port}")
        got = kit.ask(path, (f"POST http://allowed.test:{origin.port}/up HTTP/1.1\r\n"
                             "Content-Length: 100000\r\n\r\n").encode() + b"b" * 100_000)
        assert got.endswith(b"got 100000")
    finally:
        origin.close()


def test_an_origin_keeping_the_connection_gets_only_the_one_request_and_the_guest_its_answer(
        kit):
    heads = []

    def keep_alive(sock):
        data = b""
        while chunk := sock.recv(65536):  # everything it is sent, until the proxy closes
            data += chunk
        heads.append(data)

    def answer_then_keep(sock):
        read_head(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
        keep_alive(sock)

    origin = Origin(answer_then_keep)
    try:
        path = kit.attach("vm1", f"allowed.test:{origin.port}")
        one = f"POST http://allowed.test:{origin.port}/ HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
        two = "GET http://elsewhere.test/ HTTP/1.1\r\n\r\n"  # pipelined: never forwarded
        got = kit.ask(path, (one + two).encode())
        assert got == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        assert until(lambda: heads) == [b"abc"]  # the body, after the head read_head took
    finally:
        origin.close()


def test_the_decision_names_the_destination_canonically(kit):
    path = kit.attach("vm1", "allowed.test:1")
    kit.ask(path, b"CONNECT Other.TEST.:1 HTTP/1.1\r\n\r\n")
    assert [(e.host, e.port, e.reason) for e in kit.events] == \
        [("other.test", 1, "not-allowlisted")]


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_and_abrupt_closes_leave_the_proxy_serving(kit, web, seed):
    import random
    import socket
    import struct

    rnd = random.Random(seed)
    path = kit.attach("vm1", f"allowed.test:{web.port}")
    for _ in range(20):
        sock = kit.connect(path, rnd.randbytes(rnd.randrange(1, 40000)))
        if rnd.random() < 0.5:  # reset instead of a clean close
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    got = kit.ask(path, f"GET http://allowed.test:{web.port}/ HTTP/1.1\r\n\r\n".encode())
    assert got.endswith(b"hello")
    assert kit.proxy.attached() == ["vm1"]
