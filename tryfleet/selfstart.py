"""Actors that start working as soon as they exist, also after Ray restarts them: the scheduler
(its loop: recovery, dispatch, expiries) and the gateway (listening), which no caller may come
to wake after a restart.

Why not one call to itself from __init__: Ray may still count a restarting actor as
RESTARTING when that call leaves, and fails it at once ("the actor is restarting"; actor calls
are not retried), so after a SIGKILL the gateway sometimes never listened again and the
scheduler's loop waited for the next call that reached it. The call is made from a thread of
the actor's own, again with backoff until one returns.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("tryfleet.selfstart")

FIRST_PAUSE_S = 0.05
MAX_PAUSE_S = 5.0
GIVE_UP_S = 600.0
CALL_TIMEOUT_S = 120.0


def until_done(call: Callable[[], Any], what: str, give_up_s: float = GIVE_UP_S,
               sleep: Callable[[float], None] = time.sleep,
               clock: Callable[[], float] = time.monotonic) -> bool:
    """call() until it returns without raising, pausing FIRST_PAUSE_S doubling to MAX_PAUSE_S
    between tries; False after give_up_s of failures (logged)."""
    deadline, pause = clock() + give_up_s, FIRST_PAUSE_S
    while True:
        try:
            call()
            return True
        except Exception as err:  # the actor restarting, or the call itself failing
            if clock() + pause > deadline:
                log.error("%s: still failing after %.0fs, giving up: %s", what, give_up_s, err)
                return False
            log.info("%s failed (%s); trying again in %.2fs", what, err, pause)
            sleep(pause)
            pause = min(pause * 2, MAX_PAUSE_S)


def kick_self(method: str) -> None:
    """Call this actor's own `method` (no arguments), from a thread, until a call returns.
    Does nothing outside a Ray actor (tests of the class itself)."""
    import ray

    if not ray.is_initialized():
        return
    handle: Any = None
    with contextlib.suppress(Exception):  # not running as an actor
        handle = ray.get_runtime_context().current_actor
    if handle is None:
        return

    def call() -> None:  # (a future, not ray.get, which warns when called in an async actor)
        getattr(handle, method).remote().future().result(timeout=CALL_TIMEOUT_S)

    threading.Thread(target=until_done, args=(call, f"{method} of this actor"),
                     name=f"tryfleet-kick-{method}", daemon=True).start()


__all__ = ["kick_self", "until_done"]
