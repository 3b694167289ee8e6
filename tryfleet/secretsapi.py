"""Tenants' secrets through the API, for admins (`Fleet.secrets`): store, list, remove. A
value goes in and never comes out."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from .http import Api


def _q(part: str) -> str:
    return quote(part, safe="")


class Secrets:
    def __init__(self, api: Api) -> None:
        self._api = api

    def set(self, tenant: str, name: str, value: str) -> dict[str, Any]:
        """Store (or replace) a secret of tenant; its record, without the value."""
        got: dict[str, Any] = self._api.json(
            "PUT", f"/v1/secrets/{_q(tenant)}/{_q(name)}", json={"value": value})
        return got

    def list(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's secrets: names and when they were set, never values."""
        return list(self._api.json("GET", "/v1/secrets", params={"tenant": tenant})["items"])

    def remove(self, tenant: str, name: str) -> None:
        """NotFound when tenant has no such secret."""
        self._api.request("DELETE", f"/v1/secrets/{_q(tenant)}/{_q(name)}")


__all__ = ["Secrets"]
