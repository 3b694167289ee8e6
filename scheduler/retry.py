"""The retry policy: what becomes of an attempt that ended, as a pure function of how it ended
and the iteration's budget."""

from __future__ import annotations

from dataclasses import dataclass

from tryfleet.wire import Failure
from tryfleet.wire import State as Ended


@dataclass(frozen=True, slots=True)
class Budget:
    runs_left: int  # runs of a failing command left, this one included
    infra_tries: int  # attempts that ended in an infrastructure error so far
    max_attempts: int  # most attempts an infrastructure error may use
    cancel_requested: bool = False


@dataclass(frozen=True, slots=True)
class Retry:
    runs_left: int
    infra_tries: int


def retry_policy(state: Ended, failure: Failure | None, budget: Budget) -> Ended | Retry:
    """What becomes of an attempt that ended in `state`: the terminal state to commit, or a
    Retry with the budget left. A cancelled iteration ends CANCELLED unless it succeeded; an
    infrastructure error is tried again (up to max_attempts attempts) unless the request can
    never run; a failed command runs again while its retries last; the rest is final."""
    if budget.cancel_requested and state is not Ended.SUCCEEDED:
        return Ended.CANCELLED
    if state is Ended.INFRA_ERROR:
        tries = budget.infra_tries + 1
        if failure is not Failure.BAD_REQUEST and tries < budget.max_attempts:
            return Retry(budget.runs_left, tries)
        return state
    if state is Ended.FAILED and budget.runs_left > 1:
        return Retry(budget.runs_left - 1, budget.infra_tries)
    return state


__all__ = ["Budget", "Retry", "retry_policy"]
