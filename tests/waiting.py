"""Waiting in tests: on the condition itself, with a deadline, never on a pause that stands in
for it. A wait that runs out fails the test and says what it waited for."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")
POLL_S = 0.01


def until(done: Callable[[], T], timeout_s: float = 10.0,
          explain: Callable[[], Any] | None = None) -> T:
    """Poll done() until it returns something true, and return that; fail after timeout_s,
    with explain() in the message when given."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = done()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(_message(done, timeout_s, explain))
        time.sleep(POLL_S)


async def until_async(done: Callable[[], T | Awaitable[T]], timeout_s: float = 10.0,
                      explain: Callable[[], Any] | None = None) -> T:
    """until() inside an event loop: done may be a plain or an async function; the loop runs
    between polls."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = done()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return got  # type: ignore[return-value]  # awaited above: a T now
        if time.monotonic() >= deadline:
            raise AssertionError(_message(done, timeout_s, explain))
        await asyncio.sleep(POLL_S)


def _message(done: Callable[..., Any], timeout_s: float,
             explain: Callable[[], Any] | None) -> str:
    what = getattr(done, "__qualname__", repr(done))
    more = f": {explain()}" if explain is not None else ""
    return f"{what} not true after {timeout_s:g}s{more}"


__all__ = ["until", "until_async"]
