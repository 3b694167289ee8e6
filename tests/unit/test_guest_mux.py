"""The guest channel multiplexed: several requests in flight at once, each answer routed to its
request, and a hostile or dying guest failing requests, never hanging them."""

import os
import signal
import socket
import threading
import time

import pytest

from tests.waiting import until
from tryfleet.images.guestagent import wire
from tryfleet.nodeagent import GuestGone, GuestProtocolError, GuestRequestError, guest_mux
from tryfleet.nodeagent.guest import GuestChannel
from tryfleet.nodeagent.guest_mux import Inbox


class ScriptedGuest:
    """The guest's end of a socketpair: each request the host sends is answered with the
    frames script(msg) returns (raw bytes)."""

    def __init__(self, script):
        self.host, self.guest = socket.socketpair()
        self.script = script
        threading.Thread(target=self._run, daemon=True).start()
        self.channel = GuestChannel(self.host)

    def _run(self):
        decoder = wire.FrameDecoder()
        while data := self.guest.recv(65536):
            for msg in decoder.feed(data):
                self.guest.sendall(self.script(msg))


def in_threads(*calls):
    """Run each call in a thread of its own; what each returned or raised, in order."""
    got = [None] * len(calls)

    def run(n, call):
        try:
            got[n] = call()
        except Exception as err:
            got[n] = err

    threads = [threading.Thread(target=run, args=(n, c), daemon=True)
               for n, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a request never returned"
    return got


def test_commands_that_wait_for_each_other_run_at_once(agent_pair):
    # Each command waits for the other's mark: run one at a time, neither could finish.
    a, b = agent_pair.root / "a", agent_pair.root / "b"
    script = "touch {mine}; while [ ! -e {theirs} ]; do sleep 0.01; done; echo {name}"
    ra, rb = in_threads(
        lambda: agent_pair.channel.exec(["sh", "-c", script.format(mine=a, theirs=b, name="A")],
                                        timeout_s=20),
        lambda: agent_pair.channel.exec(["sh", "-c", script.format(mine=b, theirs=a, name="B")],
                                        timeout_s=20))
    assert (ra.stdout, ra.timed_out, rb.stdout, rb.timed_out) == (b"A\n", False, b"B\n", False)


def test_interleaved_output_of_commands_at_once_is_kept_apart(agent_pair):
    def lines(name):
        return lambda: agent_pair.channel.exec(
            ["sh", "-c", f"i=0; while [ $i -lt 300 ]; do echo {name}$i; i=$((i+1)); done"])

    results = in_threads(*(lines(name) for name in "abcd"))
    for name, r in zip("abcd", results, strict=True):
        assert r.stdout == b"".join(f"{name}{i}\n".encode() for i in range(300))


def test_files_and_pings_are_answered_while_a_command_blocks(agent_pair):
    fifo = agent_pair.root / "gate"
    os.mkfifo(fifo)
    ch = agent_pair.channel
    results = []
    waiting = threading.Thread(target=lambda: results.append(ch.exec(["cat", str(fifo)])),
                               daemon=True)
    waiting.start()
    until(lambda: ch._mux.pending() == 1)
    ch.write_file("/f.txt", b"meanwhile")
    assert ch.read_file("/f.txt", 100) == b"meanwhile" and ch.ping()["version"] >= 1
    with open(fifo, "wb") as fh:
        fh.write(b"released\n")
    waiting.join(10)
    assert results[0].stdout == b"released\n"


def test_frames_for_requests_the_host_does_not_know_are_dropped_and_counted():
    def flood_then_pong(msg):
        junk = b"".join(wire.encode({"ev": "out", "id": 10**6 + n, "stream": 1, "data": b"x"})
                        for n in range(5000))
        junk += wire.encode({"ev": "pong", "id": "1"}) + wire.encode({"ev": "pong"})
        return junk + wire.encode({"ev": "pong", "id": msg["id"], "version": 1})

    guest = ScriptedGuest(flood_then_pong)
    assert guest.channel.ping(timeout_s=10)["version"] == 1
    assert guest.channel.dropped_frames == 5002


def test_a_request_the_guest_floods_fails_alone(monkeypatch):
    monkeypatch.setattr(guest_mux, "MAX_INBOX_FRAMES", 50)
    execs = []

    def script(msg):  # the flood for the exec comes before the answer to the first ping
        out = b""
        if msg["op"] == "exec":
            execs.append(msg["id"])
            return wire.encode({"ev": "started", "id": msg["id"], "pid": 7}) + wire.encode(
                {"ev": "out", "id": msg["id"], "stream": 1, "data": b"first"})
        if msg["op"] == "ping" and len(execs) == 1:
            out = b"".join(wire.encode({"ev": "out", "id": execs[0], "stream": 1, "data": b"y"})
                           for _ in range(500))
            execs.append(None)
        return out + wire.encode({"ev": "pong" if msg["op"] == "ping" else "ok",
                                  "id": msg["id"]})

    guest = ScriptedGuest(script)
    reading = threading.Event()  # the exec's reader is held in its first on_output
    release = threading.Event()

    def slow_sink(stream, data):
        reading.set()
        release.wait(10)

    exec_thread_result = []
    t = threading.Thread(target=lambda: exec_thread_result.append(
        _raised(lambda: guest.channel.exec(["x"], on_output=slow_sink, timeout_s=20))))
    t.start()
    assert reading.wait(10)
    # The pong comes after the flood on the wire: once it is here, the flood has been routed.
    assert guest.channel.ping(timeout_s=10)["ev"] == "pong"
    release.set()
    t.join(10)
    (err,) = exec_thread_result
    assert isinstance(err, GuestProtocolError) and "flood" in str(err)
    assert guest.channel.ping(timeout_s=10)["ev"] == "pong"  # the channel still works


def _raised(call):
    try:
        call()
    except Exception as err:
        return err
    return None


def test_a_guest_that_dies_mid_request_wakes_every_waiter(agent_pair):
    ch = agent_pair.channel

    def crash_when_all_wait():
        until(lambda: ch._mux.pending() == 3)
        agent_pair.guest.shutdown(socket.SHUT_RDWR)

    threading.Thread(target=crash_when_all_wait, daemon=True).start()
    got = in_threads(*[lambda: ch.exec(["sleep", "30"])] * 3)
    assert all(isinstance(e, GuestGone) for e in got), got
    with pytest.raises(GuestGone, match="powered off or crashed"):
        ch.ping(timeout_s=30)  # at once: the channel is known dead


def test_a_garbled_frame_fails_every_waiter_with_a_protocol_error():
    seen = []

    def garble_on_the_second(msg):
        seen.append(msg)
        return (3).to_bytes(4, "big") + b"\xc1\xc1\xc1" if len(seen) == 2 else b""

    guest = ScriptedGuest(garble_on_the_second)
    got = in_threads(lambda: guest.channel.ping(timeout_s=30),
                     lambda: guest.channel.ping(timeout_s=30))
    assert all(isinstance(e, GuestProtocolError) and "malformed" in str(e) for e in got), got


def test_closing_the_channel_wakes_a_waiting_command(agent_pair):
    ch = agent_pair.channel
    threading.Thread(target=lambda: (until(lambda: ch._mux.pending() == 1), ch.close()),
                     daemon=True).start()
    started = time.monotonic()
    with pytest.raises(GuestGone, match="closed by the host"):
        ch.exec(["sleep", "30"])
    assert time.monotonic() - started < 20


def test_a_command_given_up_on_is_killed_and_its_late_answers_taken_quietly(agent_pair):
    ch = agent_pair.channel
    r = ch.exec(["sleep", "30"], should_stop=lambda: True)
    assert r.signal in (None, signal.SIGKILL)
    assert ch.ping()["version"] >= 1 and ch.dropped_frames == 0
    until(lambda: ch._mux.pending() == 0)


def test_an_inbox_hands_over_what_came_before_a_failure_then_the_failure():
    box = Inbox()
    assert box.deliver({"ev": "out", "id": 1}, 10) is True
    box.fail(GuestGone("gone"))
    assert box.get(time.monotonic() + 1) == {"ev": "out", "id": 1}
    with pytest.raises(GuestGone):
        box.get(time.monotonic() + 1)


def test_an_inbox_past_its_bound_drops_what_it_held_and_fails():
    box = Inbox(max_bytes=100)
    assert box.deliver({"n": 1}, 60) is True
    assert box.deliver({"n": 2}, 60) is False
    with pytest.raises(GuestProtocolError, match="flood"):
        box.get(time.monotonic() + 1)


def test_an_empty_inbox_returns_none_at_the_deadline():
    assert Inbox().get(time.monotonic() + 0.05) is None


def test_answered_requests_leave_no_route_behind(agent_pair):
    ch = agent_pair.channel
    ch.ping()
    ch.write_file("/d/f", b"x")
    ch.list_dir("/d")
    ch.exec(["echo", "hi"], stdin=b"y" * 600_000)  # stdin in several requests, unanswered
    with pytest.raises(GuestRequestError):
        ch.read_file("/missing", 10)
    until(lambda: ch._mux.pending() == 0)
    assert ch.dropped_frames == 0
