"""cluster.yaml is a real Ray cluster-launcher config: Ray's own validation accepts it."""

import copy
import pathlib

import click
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = pathlib.Path(__file__).resolve().parents[2] / "cluster.yaml"


@pytest.fixture
def config():
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_ray_validates_cluster_yaml_and_reads_it_as_a_fleet_of_its_worker_ips(config):
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)  # raises when Ray refuses the config (see the test below)
    workers = len(config["provider"]["worker_ips"])
    (node_type,) = prepared["available_node_types"].values()
    assert (node_type["min_workers"], node_type["max_workers"]) == (workers, workers) == (2, 2)


def test_it_is_an_on_prem_fleet_that_installs_and_starts_tryfleet(config):
    assert config["provider"]["type"] == "local"
    assert config["provider"]["head_ip"] and config["provider"]["worker_ips"]
    setup = " ".join(config["setup_commands"])
    assert "scripts/setup.sh" in setup and "image build base" in setup
    assert any("tryfleet up" in c and "--autoscaling-config" in c
               for c in config["head_start_ray_commands"])
    assert any("tryfleet up --address" in c for c in config["worker_start_ray_commands"])
    assert "/root/.ray/auth_token" in config["file_mounts"]


def test_validation_can_fail(config):
    config["provider"] = {"type": "local"}  # no head_ip: Ray must refuse it
    config.pop("auth")
    with pytest.raises(click.ClickException, match="head_ip"):
        validate_config(prepare_config(config))
