"""What kind of failure an attempt's INFRA_ERROR is, as the node agent reports it (on the fake
hypervisor), and what the scheduler's retry policy does with it: only a request that can never
run as given is not tried again."""

import pytest

from tests.unit.builders import make_image
from tests.waiting import until
from tryfleet.images import BuildError, RecipeError, UnknownImage
from tryfleet.nodeagent import BadRequest, GuestProtocolError, HypervisorError
from tryfleet.nodeagent.fake_hv import FakeHypervisor
from tryfleet.nodeagent.node import NodeConfig
from tryfleet.nodeagent.service import NodeService, failure_of
from tryfleet.scheduler.core import Budget, Retry, retry_policy
from tryfleet.wire import Failure, Ids, IterationSpec, StartRequest, State


def run_one(svc, image):
    """Start one attempt of `image` on svc and wait for its outcome."""
    svc.start_many("h1", [StartRequest("it-1", 1, IterationSpec(image, ("true",)), Ids())])
    (outcome,) = until(lambda: svc.collect("h1", [], timeout_s=1.0), timeout_s=30)
    return outcome


def settle(outcome):
    """What the scheduler's retry policy makes of the first attempt ending so."""
    return retry_policy(outcome.state, outcome.failure, Budget(runs_left=1, infra_tries=0,
                                                                max_attempts=3))


@pytest.fixture
def service(tmp_path, monkeypatch):
    monkeypatch.setenv("TRYFLEET_ACCEL", "tcg")
    made = []

    def make(hypervisor=None, build_image=None, images=("base",)):
        for image in images:
            make_image(tmp_path / "node", image)
        svc = NodeService(NodeConfig(data_dir=tmp_path / "node"), "h1",
                          hypervisor or FakeHypervisor(), build_image=build_image)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.close()


def test_an_image_build_that_failed_is_an_infra_failure_and_tried_again(service, tmp_path):
    def build(name):
        raise BuildError("debootstrap", "could not reach the mirror (network unreachable)")

    out = run_one(service(build_image=build, images=()), "base")  # a recipe, no build yet
    assert (out.state, out.failure) == (State.INFRA_ERROR, Failure.INFRA)
    assert "network unreachable" in out.error
    assert isinstance(settle(out), Retry)


def test_a_guest_that_sends_garbage_is_an_infra_failure(service, tmp_path):
    out = run_one(service(hypervisor=FakeHypervisor(garbled=True)), "base")
    assert (out.state, out.failure) == (State.INFRA_ERROR, Failure.INFRA)
    assert "malformed frame" in out.error
    assert isinstance(settle(out), Retry)


def test_an_unknown_image_is_a_bad_request_and_not_tried_again(service, tmp_path):
    out = run_one(service(), "no-such-image")
    assert (out.state, out.failure) == (State.INFRA_ERROR, Failure.BAD_REQUEST)
    assert "unknown image 'no-such-image'" in out.error
    assert settle(out) is State.INFRA_ERROR


@pytest.mark.parametrize("err, failure", [
    (BadRequest("cpus must be at least 1"), Failure.BAD_REQUEST),
    (RecipeError("recipes/x.toml", "no packages"), Failure.BAD_REQUEST),
    (UnknownImage("x", ["base"]), Failure.BAD_REQUEST),
    (BuildError("kernel", "download failed"), Failure.INFRA),
    (GuestProtocolError("expected pong"), Failure.INFRA),  # a ValueError, yet not the user's
    (HypervisorError("libvirt refused"), Failure.INFRA),
    (KeyError("a bug"), Failure.INFRA),
    (ValueError("a bug"), Failure.INFRA),
])
def test_only_the_bad_request_family_is_never_tried_again(err, failure):
    assert failure_of(err) is failure
