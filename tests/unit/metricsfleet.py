"""A fleet in this process (apifleet.api_fleet: the real scheduler, a node agent on the fake
hypervisor, the gateway's app) that has run a small batch, so that /metrics has samples of
every kind; and /metrics read back as samples."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.waiting import until
from tryfleet.gateway.keys import Scope

from .apifleet import Api, api_fleet

Labels = tuple[tuple[str, str], ...]
README = Path(__file__).parents[2] / "README.md"


@contextlib.contextmanager
def fleet_after_a_batch(tmp_path: Path) -> Iterator[Api]:
    """The fleet, once a batch of suite `s1` of tenant acme ended: one iteration SUCCEEDED,
    one FAILED; a limit ci-db=2 is set."""
    with api_fleet(tmp_path, audit=True) as api:
        admin = api.key("ops", Scope.ADMIN)
        limit = api.put("/v1/fleet/limits/ci-db", headers=admin, json={"value": 2})
        assert limit.status_code == 200, limit.text
        sent = api.post("/v1/batches", headers=admin, json={
            "suite": "s1", "tenant": "acme", "iterations": [
                {"image": "base", "command": ["true"]},
                {"image": "base", "command": ["sh", "-c", "exit 3"]}]})
        assert sent.status_code == 201, sent.text
        until(lambda: ended(api, admin) == 2, 180, lambda: ended(api, admin))
        yield api


def readme_metrics() -> str:
    """The README's "Metrics" section."""
    return README.read_text().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]


def readme_scrape_config() -> dict[str, Any]:
    """The yaml block of the README's "Metrics" section, as Prometheus would read it."""
    found = re.search(r"```yaml\n(.*?)```", readme_metrics(), re.S)
    assert found, "the README's Metrics section has no yaml block"
    config: dict[str, Any] = yaml.safe_load(found[1])
    return config


def ended(api: Api, headers: dict[str, str]) -> int:
    counts = api.get("/v1/suites/s1?tenant=acme", headers=headers).json()["counts"]
    return int(counts.get("SUCCEEDED", 0) + counts.get("FAILED", 0))


def samples(text: str) -> dict[tuple[str, Labels], float]:
    """Every sample of a Prometheus text exposition: (name, sorted labels) -> value; a sample
    met twice fails."""
    out: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"{key} appears twice"
            out[key] = s.value
    return out


def names(text: str) -> set[str]:
    return {name for name, _ in samples(text)}


__all__ = ["ended", "fleet_after_a_batch", "names", "readme_metrics", "readme_scrape_config",
           "samples"]
