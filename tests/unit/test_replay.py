"""A process's kept output: read by cursors in the order it came, bounded per stream, and a
late reader told how much it missed."""

from tryfleet.nodeagent.replay import JOIN_BYTES, Piece, Replay


def drain(replay, cursor, most=1 << 20):
    pieces = []
    while (piece := replay.read(cursor, most)) is not None:
        pieces.append(piece)
    return pieces


def test_pieces_come_in_the_order_printed_across_both_streams():
    r = Replay()
    for stream, data in [(1, b"a"), (2, b"B"), (1, b"c"), (1, b"d"), (2, b"E")]:
        r.add(stream, data)
    assert drain(r, [0, 0]) == [Piece(1, b"a", 0), Piece(2, b"B", 0), Piece(1, b"cd", 0),
                                Piece(2, b"E", 0)]


def test_a_reader_caught_up_mid_chunk_reads_on_from_where_it_was():
    r = Replay()
    cursor = [0, 0]
    r.add(1, b"one ")
    assert drain(r, cursor) == [Piece(1, b"one ", 0)]
    r.add(1, b"two")  # joined to the chunk the reader has read part of
    assert drain(r, cursor) == [Piece(1, b"two", 0)]
    assert r.read(cursor, 10) is None


def test_each_stream_keeps_its_last_bytes_and_a_late_reader_learns_what_it_missed():
    r = Replay(max_bytes=10)
    for n in range(5):
        r.add(1, bytes([48 + n]) * 6)
        r.add(2, b"e")  # between them: stdout's chunks are not joined
    pieces = drain(r, [0, 0])
    out = [p for p in pieces if p.stream == 1]
    assert out[0].dropped == 24 and b"".join(p.data for p in out) == b"444444"
    assert b"".join(p.data for p in pieces if p.stream == 2) == b"eeeee"  # kept its own


def test_a_reader_that_wants_no_replay_starts_at_the_end():
    r = Replay()
    r.add(1, b"old")
    cursor = r.end()
    r.add(1, b"new")
    assert drain(r, cursor) == [Piece(1, b"new", 0)]


def test_pieces_are_at_most_the_size_asked():
    r = Replay()
    r.add(1, b"x" * 100)
    assert [len(p.data) for p in drain(r, [0, 0], most=40)] == [40, 40, 20]


def test_chunks_are_bounded_in_number_as_well_as_bytes():
    r = Replay(max_chunks=3)
    for n in range(10):
        r.add(1 + n % 2, b"%d" % n)  # alternating streams: no two chunks join
    pieces = drain(r, [0, 0])
    assert b"".join(p.data for p in pieces if p.stream == 1) == b"468"
    assert sum(p.dropped for p in pieces) == 4


def test_joined_chunks_stay_under_the_join_size():
    r = Replay()
    r.add(1, b"x" * JOIN_BYTES)
    r.add(1, b"y")
    assert [p.data[:1] for p in drain(r, [0, 0])] == [b"x", b"y"]
