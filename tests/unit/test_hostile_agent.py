"""A guest agent turned hostile, on the fake hypervisor: it boots like the real one (answers
pings), then answers the iteration's command with malformed, oversized or out-of-order frames.
Each attack ends the iteration in a clear state with an error that names it, the VM and its
files are gone, and the same node agent runs the next iteration on an honest guest."""

import socket
import struct

import msgpack
import pytest

from tests.unit.builders import make_image
from tryfleet.images.guestagent import wire
from tryfleet.nodeagent import IterationSpec, NodeAgent, NodeConfig, State
from tryfleet.nodeagent.fake_hv import FakeHypervisor, _Domain

GIB_2 = 2**31


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def msg(**fields) -> bytes:
    return wire.encode(fields)


def out(req: int, data: bytes, stream: int = 1) -> bytes:
    return msg(id=req, ev="out", stream=stream, data=data)


def exited(req: int, code: object = 0) -> bytes:
    return msg(id=req, ev="exit", code=code, signal=None, truncated=[False, False])


# What the hostile guest sends when asked to run a command (request id `req`); after it the
# guest goes quiet, the channel still open (None) or closed (a trailing "close").
ATTACKS = {
    "garbage": lambda req: [frame(b"\xc1\xc1\xc1")],
    "length 2^31": lambda req: [struct.pack(">I", GIB_2) + b"\x00" * 64],
    "a list, not a map": lambda req: [frame(msgpack.packb([req, "exit", 0]))],
    "an ext type": lambda req: [frame(msgpack.packb({"id": req, "ev": msgpack.ExtType(1, b"x")}))],
    "a map key that is no string": lambda req: [frame(b"\x81\x80\x00")],  # {{}: 0}
    "an exit code that is text": lambda req: [exited(req, code="zero")],
    "output on stream 7": lambda req: [out(req, b"x", stream=7)],
    "an event nobody knows": lambda req: [msg(id=req, ev="reboot-host")],
    "a frame cut short, then silence": lambda req: [struct.pack(">I", 100) + b"\x00" * 10],
    "endless output, never an exit": lambda req: [out(req, b"y" * wire.CHUNK_BYTES)] * 64,
    "a crash mid-command": lambda req: [out(req, b"half"), "close"],
}


class HostileHypervisor(FakeHypervisor):
    """Fake domains whose guest agent answers pings and then does `attack` when asked to run
    a command; with attack None, the real agent runs as on FakeHypervisor."""

    def __init__(self) -> None:
        super().__init__()
        self.attack: str | None = None

    def _guest(self, dom: _Domain) -> None:
        if self.attack is None:
            super()._guest(dom)
            return
        attack = self.attack
        decoder = wire.FrameDecoder()
        sock = dom.guest_sock
        try:
            while data := sock.recv(65536):
                for req in decoder.feed(data):
                    if req.get("op") == "ping":
                        sock.sendall(msg(id=req["id"], ev="pong", version=1, uptime_s=1.0))
                    elif req.get("op") == "exec":
                        for chunk in ATTACKS[attack](req["id"]):
                            if chunk == "close":
                                sock.shutdown(socket.SHUT_RDWR)
                                return
                            sock.sendall(chunk)
        except OSError:
            return  # destroyed under the attacker


@pytest.fixture
def node(tmp_path, monkeypatch):
    monkeypatch.setenv("TRYFLEET_ACCEL", "tcg")
    make_image(tmp_path, "base")
    n = NodeAgent(NodeConfig(data_dir=tmp_path, restore=False), HostileHypervisor())
    yield n
    n.close()


def nothing_left(node):
    vm_dirs = [p for p in node.owner.dir.iterdir() if p.is_dir()]
    return node.hv.list_domains() == [] and vm_dirs == [] and node.live() == []


def run(node, attack, timeout_s=5.0):
    node.hv.attack = attack
    return node.run_iteration(IterationSpec(image="base", argv=("true",), timeout_s=timeout_s,
                                            max_output=1024 * 1024))


def the_next_iteration_works(node):
    got = run(node, None)
    return (got.state, got.exit_code) == (State.SUCCEEDED, 0)


@pytest.mark.parametrize("attack, says", [
    ("garbage", "malformed frame: undecodable frame"),
    ("length 2^31", f"announced a frame of {GIB_2} bytes"),
    ("a list, not a map", "holds a list, expected a map"),
    ("an ext type", "ext type 1 is not allowed"),
    ("a map key that is no string", "malformed frame"),
    ("an exit code that is text", "bad exit event"),
    ("output on stream 7", "bad output event"),
    ("an event nobody knows", "bad exec answer"),
    ("a crash mid-command", "powered off or crashed"),
])
def test_a_broken_frame_is_an_infra_error_that_names_it_and_nothing_is_left(node, attack,
                                                                             says):
    got = run(node, attack)
    assert got.state is State.INFRA_ERROR, got
    assert got.error.startswith("guest failed during the iteration") and says in got.error, \
        got.error
    assert nothing_left(node) and the_next_iteration_works(node) and nothing_left(node)


def test_a_frame_cut_short_holds_no_deadline_hostage(node):
    got = run(node, "a frame cut short, then silence", timeout_s=1.0)
    assert got.state is State.TIMED_OUT and got.duration_s < 30  # a deadline, not a hang
    assert nothing_left(node) and the_next_iteration_works(node)


def test_endless_output_is_capped_and_ends_at_the_deadline(node):
    got = run(node, "endless output, never an exit", timeout_s=1.0)
    assert got.state is State.TIMED_OUT and got.stdout_truncated
    assert len(got.stdout) == 1024 * 1024  # the iteration's cap, whatever the guest sent
    assert nothing_left(node) and the_next_iteration_works(node)


def test_answers_to_requests_never_made_and_after_the_exit_are_dropped(node):
    def out_of_order(req):
        stray = [exited(req + 1000), out(0, b"x"), msg(id="1", ev="pong"), out(-5, b"x")]
        return [*stray, out(req, b"mine\n"), exited(req), out(req, b"late\n"), exited(req, 9)]

    ATTACKS["out of order"] = out_of_order
    try:
        got = run(node, "out of order")
    finally:
        del ATTACKS["out of order"]
    assert (got.state, got.exit_code, got.stdout) == (State.SUCCEEDED, 0, b"mine\n")
    assert nothing_left(node) and the_next_iteration_works(node)
