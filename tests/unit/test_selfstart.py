"""An actor's call to itself at start is made again until one returns (tryfleet/selfstart.py):
a call that leaves while Ray still counts the actor as restarting fails at once."""

from tryfleet.selfstart import FIRST_PAUSE_S, MAX_PAUSE_S, until_done


class Clock:
    def __init__(self):
        self.now, self.pauses = 0.0, []

    def sleep(self, seconds):
        self.pauses.append(seconds)
        self.now += seconds


class Refused(Exception):
    pass


def failing(times):
    calls = []

    def call():
        calls.append(1)
        if len(calls) <= times:
            raise Refused("the actor is restarting")

    return call, calls


def test_a_call_refused_while_restarting_is_made_again_until_it_returns():
    clock, (call, calls) = Clock(), failing(3)
    assert until_done(call, "start", sleep=clock.sleep, clock=lambda: clock.now)
    assert len(calls) == 4
    assert clock.pauses == [FIRST_PAUSE_S, FIRST_PAUSE_S * 2, FIRST_PAUSE_S * 4]


def test_pauses_grow_to_a_ceiling_and_it_gives_up_after_its_window():
    clock, (call, calls) = Clock(), failing(10_000)
    assert not until_done(call, "start", give_up_s=60, sleep=clock.sleep,
                          clock=lambda: clock.now)
    assert max(clock.pauses) == MAX_PAUSE_S and clock.now <= 60
    assert len(calls) == len(clock.pauses) + 1
