"""Two fleets on one machine (another port, another data dir) never stop each other's Ray."""

from tryfleet.cluster import _names, ray_temp_dir


def test_each_port_has_its_own_ray_temp_dir():
    assert ray_temp_dir(6390) == "/tmp/tryfleet-ray"
    assert ray_temp_dir(6391) == "/tmp/tryfleet-ray-6391"


def test_down_names_only_its_own_ray_processes():
    mine, address = "/tmp/tryfleet-ray", "192.0.2.2:6390"
    assert _names("raylet --session_dir=/tmp/tryfleet-ray/session_1", mine, address)
    assert _names("ray start --address=192.0.2.2:6390", mine, address)
    assert not _names("raylet --session_dir=/tmp/tryfleet-ray-6391/session_1", mine, address)
    assert not _names("ray start --address=192.0.2.2:63901", mine, address)
