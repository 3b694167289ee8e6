"""The guest agent's file operations against the real host channel, over a socketpair (no VM):
stat, list (to a depth, bounded), mkdir, remove, move, ranged reads, appends; and the host's
checks of what a hostile guest answers."""

import os
import socket
import threading

import pytest

from tryfleet.images.guestagent import wire
from tryfleet.nodeagent import GuestProtocolError, GuestRequestError
from tryfleet.nodeagent.errors import GuestPathMissing, GuestPathRefused
from tryfleet.nodeagent.guest import GuestChannel
from tryfleet.wire import FileType


@pytest.fixture
def tree(agent_pair):
    """/work with a.txt (5 bytes, 0600), sub/b.bin, and link -> a.txt."""
    root = agent_pair.root / "work"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"hello")
    (root / "a.txt").chmod(0o600)
    (root / "sub" / "b.bin").write_bytes(b"\x00" * 10)
    (root / "link").symlink_to("a.txt")
    return agent_pair.channel


def test_stat_says_what_a_path_is_without_following_a_symlink(tree):
    a = tree.stat("/work/a.txt")
    assert (a.name, a.path, a.type, a.size, a.mode) == ("a.txt", "/work/a.txt", FileType.FILE,
                                                        5, 0o600)
    assert a.owner and a.mtime > 0
    link = tree.stat("/work/link")
    assert (link.type, link.target) == (FileType.SYMLINK, "a.txt")
    assert tree.stat("/work/sub").type is FileType.DIR


def test_listing_is_sorted_and_goes_as_deep_as_asked(tree):
    entries, truncated = tree.list_dir("/work")
    assert [(e.name, e.type) for e in entries] == [
        ("a.txt", FileType.FILE), ("link", FileType.SYMLINK), ("sub", FileType.DIR)]
    assert not truncated
    deep, _ = tree.list_dir("/work", depth=2)
    assert [e.path for e in deep] == ["/work/a.txt", "/work/link", "/work/sub",
                                      "/work/sub/b.bin"]


def test_a_listing_stops_at_its_bound_and_says_so(agent_pair):
    many = agent_pair.root / "many"
    many.mkdir()
    for n in range(7):
        (many / f"f{n}").write_bytes(b"")
    entries, truncated = agent_pair.channel.list_dir("/many", max_entries=5)
    assert len(entries) == 5 and truncated
    entries, truncated = agent_pair.channel.list_dir("/many", max_entries=7)
    assert len(entries) == 7 and not truncated


def test_a_listing_too_big_for_one_frame_arrives_whole(agent_pair):
    big = agent_pair.root / "big"
    big.mkdir()
    for n in range(3000):  # ~3000 x 200-character names: several frames
        (big / (f"{n:04d}" + "x" * 196)).write_bytes(b"")
    entries, truncated = agent_pair.channel.list_dir("/big")
    assert len(entries) == 3000 and not truncated and entries[-1].name.startswith("2999")


def test_missing_paths_are_the_callers_mistake_not_the_guests(tree):
    for call in (lambda: tree.stat("/work/nope"), lambda: tree.list_dir("/nope"),
                 lambda: tree.list_dir("/work/a.txt"), lambda: tree.read_file("/nope", 10),
                 lambda: tree.remove("/nope"), lambda: tree.move("/nope", "/work/x")):
        with pytest.raises(GuestPathMissing):
            call()


def test_mkdir_makes_parents_and_says_whether_it_made_anything(tree, agent_pair):
    assert tree.mkdir("/work/x/y/z") is True
    assert (agent_pair.root / "work/x/y/z").is_dir()
    assert tree.mkdir("/work/x/y/z") is False
    with pytest.raises(GuestPathMissing):
        tree.mkdir("/work/p/q", parents=False)
    with pytest.raises(GuestPathRefused):
        tree.mkdir("/work/a.txt")  # a file is there


def test_remove_takes_a_file_an_empty_dir_or_with_recursive_a_tree(tree, agent_pair):
    tree.remove("/work/a.txt")
    with pytest.raises(GuestPathRefused, match="not empty"):
        tree.remove("/work/sub")
    tree.remove("/work/sub", recursive=True)
    assert sorted(os.listdir(agent_pair.root / "work")) == ["link"]
    with pytest.raises(GuestPathRefused, match="root"):
        tree.remove("/", recursive=True)


def test_move_renames_and_answers_what_is_there_now(tree, agent_pair):
    moved = tree.move("/work/a.txt", "/work/sub/c.txt")
    assert (moved.path, moved.size) == ("/work/sub/c.txt", 5)
    assert (agent_pair.root / "work/sub/c.txt").read_bytes() == b"hello"
    assert not (agent_pair.root / "work/a.txt").exists()


def test_ranged_reads_and_appends(tree):
    tree.write_file("/work/log", b"one\n")
    tree.write_file("/work/log", b"two\n", append=True)
    assert tree.read_range("/work/log", 4, 100) == (b"two\n", True)
    assert tree.read_range("/work/log", 0, 3) == (b"one", False)


def test_names_that_are_not_utf8_arrive_replaced_and_the_agent_keeps_serving(agent_pair):
    odd = agent_pair.root / "odd"
    odd.mkdir()
    with open(os.path.join(os.fsencode(odd), b"caf\xe9"), "wb"):
        pass
    (entry,), _ = agent_pair.channel.list_dir("/odd")
    assert entry.name == "caf\ufffd"
    assert agent_pair.channel.exec(["true"]).exit_code == 0


def test_a_request_that_raises_in_the_agent_is_an_error_not_a_dead_agent(agent_pair):
    ch = agent_pair.channel
    with pytest.raises(GuestRequestError, match="null byte"):
        ch.exec(["echo", "nul\x00byte"])  # Popen refuses it with ValueError
    assert ch.ping()["version"] == wire.PROTOCOL_VERSION


# ---- a hostile guest -----------------------------------------------------------------------
def _guest_answering(*frames: dict) -> GuestChannel:
    host, guest = socket.socketpair()
    data = b"".join(wire.encode(f) for f in frames)
    threading.Thread(target=lambda: (guest.recv(4096), guest.sendall(data)),
                     daemon=True).start()
    return GuestChannel(host)


def _entry(**over):
    return {"name": "a", "path": "/d/a", "type": "file", "size": 1, "mode": 0o644,
            "mtime": 1.0, "owner": "root", "group": "root", "target": None, **over}


@pytest.mark.parametrize("bad", [
    {"name": "../etc", "path": "/d/../etc"},  # a path out of the directory asked for
    {"name": "a", "path": "/elsewhere/a"},
    {"name": "a/b", "path": "/d/a/b"},  # a name that is not one
    {"type": "device"}, {"size": -1}, {"size": "1"}, {"mode": 0o70000}, {"mtime": float("nan")},
    {"name": "x" * 5000, "path": "/d/" + "x" * 5000}, {"owner": 7},
])
def test_the_host_refuses_a_listing_entry_that_is_not_what_it_asked_for(bad):
    ch = _guest_answering({"ev": "entries", "id": 1, "entries": [_entry(**bad)]},
                          {"ev": "done", "id": 1, "truncated": False})
    with pytest.raises(GuestProtocolError):
        ch.list_dir("/d")


def test_the_host_refuses_more_entries_than_it_asked_for():
    ch = _guest_answering({"ev": "entries", "id": 1, "entries": [
        _entry(name=f"e{n}", path=f"/d/e{n}") for n in range(3)]},
        {"ev": "done", "id": 1, "truncated": False})
    with pytest.raises(GuestProtocolError, match="after 0 entries"):
        ch.list_dir("/d", max_entries=2)


def test_the_host_refuses_a_stat_of_another_path():
    ch = _guest_answering({"ev": "entry", "id": 1, "entry": _entry(path="/etc/shadow",
                                                                   name="shadow")})
    with pytest.raises(GuestProtocolError):
        ch.stat("/d/a")
