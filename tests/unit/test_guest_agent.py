"""The real guest agent against the real host channel, over a socketpair (no VM)."""

import itertools
import os
import signal
import socket
import threading

import pytest

from tryfleet.images.guestagent import wire
from tryfleet.nodeagent import GuestGone, GuestProtocolError, GuestRequestError
from tryfleet.nodeagent.guest import GuestChannel


def test_ping_answers_with_the_protocol_version(agent_pair):
    assert agent_pair.channel.ping()["version"] == wire.PROTOCOL_VERSION


def test_exit_code_and_both_streams(agent_pair):
    r = agent_pair.channel.exec(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.exit_code, r.signal, r.stdout, r.stderr) == (3, None, b"out\n", b"err\n")
    assert not r.timed_out


def test_output_is_streamed_in_order_while_the_command_runs(agent_pair):
    # The command prints a line, then waits on a FIFO for the host to have received it before
    # it prints the next; the host, holding the FIFO open all along, answers each line that
    # arrives. Output held back until the end would leave the command waiting: a timeout.
    gate = agent_pair.root / "gate"
    os.mkfifo(gate)
    answer = os.open(gate, os.O_RDWR)  # never blocks; a write lands even before the read
    seen = []

    def arrived(stream, data):
        seen.append(data)
        for _ in range(data.count(b"\n")):
            os.write(answer, b"go\n")

    script = f"exec 3< {gate}; for i in 1 2 3; do echo line$i; read go <&3; done"
    try:
        r = agent_pair.channel.exec(["sh", "-c", script], on_output=arrived, timeout_s=30)
    finally:
        os.close(answer)
    assert (r.stdout, r.timed_out) == (b"line1\nline2\nline3\n", False)
    # each line arrived before the next was printed: the arrivals end where the lines do
    assert {6, 12, 18} <= set(itertools.accumulate(len(d) for d in seen))


def test_stdin_env_and_cwd(agent_pair):
    (agent_pair.root / "work").mkdir()
    r = agent_pair.channel.exec(["sh", "-c", 'cat; echo "$GREETING"; pwd'], stdin=b"piped\n",
                                env={"GREETING": "hello"}, cwd="/work")
    assert r.stdout == b"piped\nhello\n" + str(agent_pair.root / "work").encode() + b"\n"


def test_large_stdin_is_delivered_whole(agent_pair):
    data = bytes(range(256)) * 4096
    assert agent_pair.channel.exec(["cat"], stdin=data).stdout == data


def test_command_killed_by_a_signal_reports_the_signal(agent_pair):
    r = agent_pair.channel.exec(["sh", "-c", "kill -TERM $$"])
    assert (r.exit_code, r.signal) == (None, signal.SIGTERM)


def test_timeout_kills_and_says_so(agent_pair):
    r = agent_pair.channel.exec(["sleep", "30"], timeout_s=0.3)
    assert r.timed_out and r.signal == signal.SIGKILL


def test_output_beyond_the_cap_is_cut_and_flagged(agent_pair):
    r = agent_pair.channel.exec(["sh", "-c", "head -c 3000000 /dev/zero; echo tail >&2"],
                                max_output=1000)
    assert len(r.stdout) == 1000 and r.stdout_truncated
    assert r.stderr == b"tail\n" and not r.stderr_truncated


def test_missing_command_exits_127_with_a_message(agent_pair):
    r = agent_pair.channel.exec(["no-such-command-here"])
    assert r.exit_code == 127 and b"no-such-command-here" in r.stderr


def test_files_both_ways_in_chunks(agent_pair):
    data = b"0123456789" * 100_000  # several wire chunks
    agent_pair.channel.write_file("/deep/dir/f.bin", data, mode=0o600)
    assert (agent_pair.root / "deep/dir/f.bin").stat().st_mode & 0o777 == 0o600
    assert agent_pair.channel.read_file("/deep/dir/f.bin", 10**7) == data


def test_reading_a_missing_file_is_a_request_error(agent_pair):
    with pytest.raises(GuestRequestError, match="No such file"):
        agent_pair.channel.read_file("/nope", 100)


def test_reading_past_the_limit_is_refused(agent_pair):
    agent_pair.channel.write_file("/big", b"x" * 5000)
    with pytest.raises(GuestRequestError, match="larger than"):
        agent_pair.channel.read_file("/big", 100)


def test_relative_paths_are_refused(agent_pair):
    with pytest.raises(GuestRequestError, match="absolute"):
        agent_pair.channel.write_file("relative.txt", b"x")


def test_bad_requests_get_errors_and_the_agent_keeps_serving(agent_pair):
    ch = agent_pair.channel
    with pytest.raises(GuestRequestError, match="argv"):
        ch._call("exec", "exec", 5, argv=[])
    with pytest.raises(GuestRequestError, match="unknown op"):
        ch._call("format_disk", "format_disk", 5)
    assert ch.exec(["true"]).exit_code == 0


def _hostile_guest(payload: bytes) -> GuestChannel:
    host, guest = socket.socketpair()
    threading.Thread(target=lambda: (guest.recv(4096), guest.sendall(payload)),
                     daemon=True).start()
    return GuestChannel(host)


def test_host_refuses_an_oversized_frame_from_the_guest():
    ch = _hostile_guest((50 * 1024 * 1024).to_bytes(4, "big") + b"x" * 100)
    with pytest.raises(GuestProtocolError, match="frame"):
        ch.ping(timeout_s=5)


def test_host_refuses_a_malformed_answer():
    ch = _hostile_guest(wire.encode({"ev": "exit", "id": 1, "code": "zero"}))
    with pytest.raises(GuestProtocolError, match="bad exit event"):
        ch.exec(["true"], timeout_s=5)


def test_host_caps_output_even_when_the_guest_ignores_the_cap():
    frames = b"".join(wire.encode({"ev": "out", "id": 1, "stream": 1, "data": b"y" * 1000})
                      for _ in range(5))
    frames += wire.encode({"ev": "exit", "id": 1, "code": 0, "truncated": [False, False]})
    r = _hostile_guest(frames).exec(["true"], max_output=1500, timeout_s=5)
    assert len(r.stdout) == 1500 and r.stdout_truncated


def test_channel_closing_mid_command_is_guest_gone():
    host, guest = socket.socketpair()
    threading.Thread(target=lambda: (guest.recv(4096), guest.close()), daemon=True).start()
    with pytest.raises(GuestGone):
        GuestChannel(host).exec(["sleep", "10"], timeout_s=5)
