"""What a process printed, kept for subscribers that join late: the last REPLAY_BYTES of each
stream (stdout, stderr), in chunks ordered across both streams as they came, read by any number
of cursors (a cursor is a byte offset per stream, so a chunk that grows under a reader is read
on from where it left off).

Bounded whatever the guest sends: at most max_bytes and max_chunks per stream; chunks that
follow one another on one stream are joined up to JOIN_BYTES. Older output is dropped, and a
cursor that pointed into it learns how many bytes it missed. Not thread-safe: its owner locks.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass

REPLAY_BYTES = 1024 * 1024
REPLAY_CHUNKS = 4096
JOIN_BYTES = 64 * 1024


@dataclass(slots=True)
class _Chunk:
    seq: int  # order across both streams
    start: int  # offset in its stream of data[0]
    data: bytearray


@dataclass(frozen=True, slots=True)
class Piece:
    stream: int  # 1 stdout, 2 stderr
    data: bytes
    dropped: int  # bytes of this stream before data that were no longer kept


class Replay:
    def __init__(self, max_bytes: int = REPLAY_BYTES, max_chunks: int = REPLAY_CHUNKS) -> None:
        self._max_bytes, self._max_chunks = max_bytes, max_chunks
        self._chunks: tuple[deque[_Chunk], deque[_Chunk]] = (deque(), deque())
        self._kept = [0, 0]
        self._start = [0, 0]  # offset of the oldest byte kept
        self._end = [0, 0]  # offset past the newest byte
        self._seq = 0
        self._last = 0  # the stream of the newest chunk

    def add(self, stream: int, data: bytes) -> None:
        if not data:
            return
        i = stream - 1
        chunks = self._chunks[i]
        if chunks and self._last == stream and len(chunks[-1].data) + len(data) <= JOIN_BYTES:
            chunks[-1].data += data
        else:
            self._seq += 1
            chunks.append(_Chunk(self._seq, self._end[i], bytearray(data)))
        self._last = stream
        self._end[i] += len(data)
        self._kept[i] += len(data)
        while chunks and (self._kept[i] > self._max_bytes or len(chunks) > self._max_chunks):
            old = chunks.popleft()
            self._kept[i] -= len(old.data)
            self._start[i] = old.start + len(old.data)

    def end(self) -> list[int]:
        """A cursor past everything printed so far (a subscriber that wants no replay)."""
        return list(self._end)

    def read(self, cursor: list[int], most: int) -> Piece | None:
        """The next piece after cursor, at most `most` bytes, of the stream whose output came
        first; the cursor moves past it. None: nothing new."""
        best: tuple[int, int, int, int] | None = None  # seq, stream index, offset, dropped
        for i in (0, 1):
            pos = cursor[i]
            if pos >= self._end[i]:
                continue
            dropped = max(0, self._start[i] - pos)
            pos += dropped
            chunks = self._chunks[i]
            if pos >= self._end[i] or not chunks:  # all of it dropped
                cursor[i] = self._end[i]
                return Piece(i + 1, b"", dropped)
            at = bisect.bisect_right(chunks, pos, key=lambda c: c.start) - 1
            seq = chunks[at].seq
            if best is None or seq < best[0]:
                best = (seq, i, pos, dropped)
        if best is None:
            return None
        _, i, pos, dropped = best
        chunks = self._chunks[i]
        chunk = chunks[bisect.bisect_right(chunks, pos, key=lambda c: c.start) - 1]
        offset = pos - chunk.start
        data = bytes(chunk.data[offset:offset + most])
        cursor[i] = pos + len(data)
        return Piece(i + 1, data, dropped)


__all__ = ["JOIN_BYTES", "REPLAY_BYTES", "REPLAY_CHUNKS", "Piece", "Replay"]
