"""Tenants' secret values masked out of what the scheduler records and serves: the output
of every outcome before it reaches the ledger, and live output read from a host."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

from tryfleet.masking import longest, mask, masked_window
from tryfleet.secretstore import SecretStore
from tryfleet.wire import Outcome

from .records import unqualified


def masked_outcome(o: Outcome, store: SecretStore) -> Outcome:
    """The outcome with every value of its tenant's secrets masked in its output."""
    values = store.mask_values(unqualified(o.id)[0])
    if not values:
        return o
    error = o.error
    if error is not None:
        error = mask(error.encode("utf-8", "surrogatepass"), values).decode(
            "utf-8", "surrogatepass")
    return replace(o, stdout=mask(o.stdout, values, cut=o.stdout_truncated),
                   stderr=mask(o.stderr, values, cut=o.stderr_truncated), error=error)


Read = Callable[[int, int], Awaitable[tuple[bytes, bytes] | None]]


async def masked_live(values: tuple[bytes, ...], read: Read, out_offset: int,
                      err_offset: int) -> tuple[bytes, bytes] | None:
    """Live output past the offsets, masked: read from a little before each offset (so a
    value that began before it is seen whole), less any end that may be the start of a
    value (read again next time, from where this stops)."""
    if not values:
        return await read(out_offset, err_offset)
    back = longest(values) - 1
    starts = (max(0, out_offset - back), max(0, err_offset - back))
    got = await read(*starts)
    if got is None:
        return None
    return (masked_window(got[0], starts[0], out_offset, values, done=False),
            masked_window(got[1], starts[1], err_offset, values, done=False))


__all__ = ["masked_live", "masked_outcome"]
