"""Secret values masked out of output: every byte of every occurrence becomes `*`.

The mask keeps the output's length, so every byte offset the API gives out (output read past
offsets, live from a host and then from the ledger, capped at the same size) means the same
in masked output as in the raw output. Overlapping occurrences are all masked.

A stream is masked as it comes (`StreamMasker`): a value split across chunks is caught by
holding back the end of each chunk that could be the start of a value (at most the longest
value's length less one byte) until the next chunk, or the end, says what it is.

    m = StreamMasker([b"hunter22"])
    m.feed(b"pass: hun") + m.feed(b"ter22\\n") + m.flush()  # b"pass: ********\\n"
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

MASK = ord("*")


def _marks(data: bytes, values: Iterable[bytes]) -> tuple[bytearray, int]:
    """`data` with every occurrence of a value masked, and where the last one ends (0: none)."""
    out, last_end = bytearray(data), 0
    for value in values:
        if not value:
            continue
        at = data.find(value)
        while at >= 0:
            end = at + len(value)
            out[at:end] = bytes([MASK]) * len(value)
            last_end = max(last_end, end)
            at = data.find(value, at + 1)
    return out, last_end


def mask(data: bytes, values: Sequence[bytes], cut: bool = False) -> bytes:
    """`data` with every occurrence of each of `values` masked (same length). cut: data was
    cut out of a longer output (truncated), so a value may have been cut in two at either
    end: what starts with the end of a value, or ends with the start of one, is masked too."""
    if not values or not data:
        return data
    out, last_end = _marks(data, values)
    if cut:
        tail = partial_tail(data, values, last_end)
        out[len(data) - tail:] = bytes([MASK]) * tail
        head = partial_head(data, values)
        out[:head] = bytes([MASK]) * head
    return bytes(out)


def partial_head(data: bytes, values: Iterable[bytes]) -> int:
    """How many bytes at the start of data are the end of a value (a proper suffix of one),
    which a cut before data may have separated from its start: the longest such head."""
    longest = 0
    for value in values:
        for n in range(min(len(value) - 1, len(data)), longest, -1):
            if data.startswith(value[-n:]):
                longest = n
                break
    return longest


def partial_tail(data: bytes, values: Iterable[bytes], start: int = 0) -> int:
    """How many bytes at the end of data[start:] are the start of a value (a proper prefix of
    one), which the next chunk may complete: the longest such tail."""
    longest = 0
    for value in values:
        most = min(len(value) - 1, len(data) - start)
        for n in range(most, longest, -1):
            if data.endswith(value[:n]):
                longest = n
                break
    return longest


class StreamMasker:
    """Masks one stream chunk by chunk; what it returns, joined, is mask(whole stream)."""

    def __init__(self, values: Sequence[bytes]) -> None:
        self.values = tuple(v for v in values if v)
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        """What of the stream so far is now known masked (maybe less than given)."""
        if not self.values:
            return data
        buf = self._held + data
        masked, last_end = _marks(buf, self.values)
        keep = partial_tail(buf, self.values, last_end)
        cut = len(buf) - keep
        self._held = buf[cut:]
        return bytes(masked[:cut])

    def flush(self) -> bytes:
        """The held-back end, at the stream's end (no value can complete it any more)."""
        rest, self._held = self._held, b""
        return rest


def masked_window(data: bytes, start: int, offset: int, values: Sequence[bytes],
                  done: bool) -> bytes:
    """Output from `offset` masked, given data read from `start` (<= offset, so a value that
    began before offset is seen whole); unless done, less the end that may be the start of
    a value (the caller reads from there next time)."""
    if not values:
        return data[offset - start:]
    masked, last_end = _marks(data, values)
    cut = len(data)
    if not done:
        cut -= partial_tail(data, values, max(last_end, offset - start))
    return bytes(masked[offset - start:max(cut, offset - start)])


def longest(values: Sequence[bytes]) -> int:
    return max((len(v) for v in values), default=0)


__all__ = ["StreamMasker", "longest", "mask", "masked_window", "partial_head", "partial_tail"]
