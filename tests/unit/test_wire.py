import msgpack
import pytest

from tryfleet.images.guestagent import wire


def test_frames_round_trip_across_arbitrary_splits():
    msgs = [{"op": "ping", "id": 1}, {"ev": "out", "id": 2, "data": b"\x00\xff" * 100}]
    blob = b"".join(wire.encode(m) for m in msgs)
    dec = wire.FrameDecoder()
    got = []
    for i in range(0, len(blob), 7):
        got += dec.feed(blob[i:i + 7])
    assert got == msgs


def test_oversized_frame_is_refused_before_it_is_buffered():
    dec = wire.FrameDecoder(max_frame_bytes=1024)
    with pytest.raises(wire.FrameError, match="2048 bytes"):
        dec.feed((2048).to_bytes(4, "big") + b"x")


def test_a_frame_that_is_not_a_map_is_refused():
    body = msgpack.packb([1, 2, 3])
    with pytest.raises(wire.FrameError, match="expected a map"):
        wire.FrameDecoder().feed(len(body).to_bytes(4, "big") + body)


def test_ext_types_are_refused():
    body = msgpack.packb({"x": msgpack.ExtType(5, b"boom")})
    with pytest.raises(wire.FrameError, match="ext type 5"):
        wire.FrameDecoder().feed(len(body).to_bytes(4, "big") + body)


def test_garbage_is_a_frame_error():
    with pytest.raises(wire.FrameError):
        wire.FrameDecoder().feed((3).to_bytes(4, "big") + b"\xc1\xc1\xc1")


def test_encode_refuses_frames_over_the_limit():
    with pytest.raises(wire.FrameError):
        wire.encode({"data": b"x" * (wire.MAX_FRAME_BYTES + 1)})
