"""How tryfleet.connect() finds its fleet and its key: an explicit URL, else TRYFLEET_URL, else
the fleet `tryfleet up` started on this host (up.json and admin.key in the data directory),
else an embedded fleet; the key is checked at once."""

import json
import socket

import pytest

import tryfleet
from tryfleet import local
from tryfleet.errors import AccessDenied, FleetUnavailable

from .fakeapi import ACME, ADMIN, FakeApi


@pytest.fixture
def fake():
    return FakeApi()


@pytest.fixture
def env(monkeypatch, tmp_path):
    for name in ("TRYFLEET_URL", "TRYFLEET_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRYFLEET_DATA", str(tmp_path))
    return monkeypatch


@pytest.fixture
def ray_head():
    """Something listening where up.json says Ray's head is."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield f"127.0.0.1:{s.getsockname()[1]}"


def up_here(data_dir, address, api_url="http://127.0.0.1:8470", key=ADMIN):
    state = {"address": address, "started_head": True}
    if api_url:
        state["api_url"] = api_url
    (data_dir / "up.json").write_text(json.dumps(state))
    if key:
        (data_dir / "admin.key").write_text(key + "\n")


def test_an_explicit_url_and_key(env, fake):
    f = tryfleet.connect("http://fleet.test:8470/", api_key=ACME, transport=fake.transport)
    assert f.url == "http://fleet.test:8470" and not f.embedded
    (me,) = fake.requests
    assert me.url.path == "/v1/me" and me.headers["authorization"] == f"Bearer {ACME}"


def test_a_url_without_a_scheme_is_http(env, fake):
    assert tryfleet.connect("fleet.test:8470", ACME, transport=fake.transport).url == \
        "http://fleet.test:8470"


def test_the_environment_names_the_fleet_and_its_key(env, fake):
    env.setenv("TRYFLEET_URL", "http://from-env:8470")
    env.setenv("TRYFLEET_API_KEY", ACME)
    f = tryfleet.connect(transport=fake.transport)
    assert f.url == "http://from-env:8470" and fake.requests[0].url.host == "from-env"
    assert f.me()["tenant"] == "acme"


def test_an_explicit_key_wins_over_the_environment(env, fake):
    env.setenv("TRYFLEET_API_KEY", ACME)
    assert tryfleet.connect("http://x", ADMIN, transport=fake.transport).me()["tenant"] == \
        "default"


def test_the_fleet_up_started_here_with_its_local_admin_key(env, fake, tmp_path, ray_head):
    up_here(tmp_path, ray_head)
    f = tryfleet.connect(transport=fake.transport)
    assert f.url == "http://127.0.0.1:8470" and f.me()["scopes"] == ["admin"]


def test_a_url_naming_the_local_fleet_also_gets_its_admin_key(env, fake, tmp_path, ray_head):
    up_here(tmp_path, ray_head)
    f = tryfleet.connect("http://127.0.0.1:8470", transport=fake.transport)
    assert f.me()["scopes"] == ["admin"]


def test_another_url_without_a_key_is_refused_before_any_request(env, fake, tmp_path, ray_head):
    up_here(tmp_path, ray_head)
    with pytest.raises(AccessDenied, match="TRYFLEET_API_KEY"):
        tryfleet.connect("http://elsewhere:8470", transport=fake.transport)
    assert fake.requests == []


def test_a_refused_key_fails_connect(env, fake):
    with pytest.raises(AccessDenied, match="not valid"):
        tryfleet.connect("http://x", "tf_000000000000_" + "z" * 43, transport=fake.transport)


def test_a_stale_up_json_and_no_fleet_side_says_how_to_get_either(env, fake, tmp_path,
                                                                  monkeypatch):
    up_here(tmp_path, "127.0.0.1:1")  # nothing listens there: that fleet is gone
    monkeypatch.setattr(local, "fleet_side_missing", lambda: ["ray", "libvirt"])
    with pytest.raises(FleetUnavailable) as err:
        tryfleet.connect(transport=fake.transport)
    assert "pip install 'tryfleet[fleet]'" in str(err.value) and "TRYFLEET_URL" in str(err.value)


def test_a_fleet_up_here_without_an_api_is_named(env, tmp_path, ray_head):
    up_here(tmp_path, ray_head, api_url=None)
    with pytest.raises(FleetUnavailable, match="no HTTP API"):
        tryfleet.connect()


def test_with_nothing_up_an_embedded_fleet_starts_and_close_stops_it(env, fake, monkeypatch):
    from tryfleet import cluster

    stopped = []
    monkeypatch.setattr(local, "fleet_side_missing", list)
    monkeypatch.setattr(cluster, "start_embedded_api",
                        lambda data: ("http://127.0.0.1:40001", ADMIN, lambda: stopped.append(1)))
    f = tryfleet.connect(transport=fake.transport)
    assert f.embedded and f.url == "http://127.0.0.1:40001"
    f.close()
    f.close()
    assert stopped == [1]


def test_an_embedded_fleet_whose_api_refuses_is_stopped_again(env, fake, monkeypatch):
    from tryfleet import cluster

    stopped = []
    monkeypatch.setattr(local, "fleet_side_missing", list)
    monkeypatch.setattr(cluster, "start_embedded_api",
                        lambda data: ("http://x", "tf_999999999999_" + "q" * 43,
                                      lambda: stopped.append(1)))
    with pytest.raises(AccessDenied):
        tryfleet.connect(transport=fake.transport)
    assert stopped == [1]


def test_the_client_reads_the_files_the_fleet_side_writes():
    from tryfleet import cluster
    from tryfleet.gateway import keys
    from tryfleet.nodeagent import node

    assert (local.STATE_FILE, local.ADMIN_KEY_FILE, local.DEFAULT_DATA_DIR) == \
        (cluster.STATE_FILE, keys.ADMIN_KEY_FILE, node.DEFAULT_DATA_DIR)
