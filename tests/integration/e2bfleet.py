"""A real fleet for the E2B SDK tests, as test_api_sandboxes.py makes one: Ray started in this
process, the real node agent (real VMs of the built base image), the scheduler and the gateway
actor on a free loopback port, keys made with KeyStore."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tryfleet.gateway.keys import KeyStore, Scope

from .vmfleet import vm_fleet


class E2BFleet:
    def __init__(self, url: str, keys: KeyStore) -> None:
        self.url, self.keys = url, keys

    def key(self, tenant: str = "acme", *scopes: Scope) -> str:
        _, token = self.keys.create(tenant, frozenset(scopes or {Scope.SANDBOX}),
                                    created_by="test")
        return token

    def env(self, key: str) -> dict[str, str]:
        """What a user of E2B's SDKs sets: the gateway for both planes, a tryfleet key."""
        return {"E2B_API_URL": self.url, "E2B_SANDBOX_URL": self.url, "E2B_API_KEY": key}

    def opts(self, key: str) -> dict[str, str]:
        """The same as the Python SDK's arguments."""
        return {"api_url": self.url, "sandbox_url": self.url, "api_key": key}


@contextlib.contextmanager
def e2b_fleet(data_dir: Path, host: str) -> Iterator[E2BFleet]:
    with vm_fleet(data_dir, host) as v:
        yield E2BFleet(v.url, v.keys)
