"""Secrets exposed to a command as environment variables, and masked out of what it prints.

A request names secrets (`"secrets": ["GITHUB_TOKEN"]`); the tenant's policy must allow each
name (`secrets = [...]` globs: else a 403 naming the rule, audited), and the tenant must hold
each (else a 404 naming the missing ones). Their values go to the node in the request that
starts the command and nowhere else. What the tenant's commands print is masked with every
value of the tenant's secrets (tryfleet/masking.py), whichever request exposed them.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import Request

from tryfleet.errors import BadRequest
from tryfleet.masking import StreamMasker, mask
from tryfleet.secretstore import SecretStore

from .guard import enforce
from .keys import Principal


def _store(request: Request) -> SecretStore:
    found: SecretStore = request.app.state.secrets
    return found


async def expose(request: Request, who: Principal, tenant: str, names: Sequence[str],
                 env: Sequence[tuple[str, str]], what: str) -> tuple[tuple[str, str], ...]:
    """`env` with the named secrets of tenant added (sorted by name), once policy allowed
    them: PolicyDenied (403, audited), NotFound (404) or BadRequest (a name also in env)."""
    if not names:
        return tuple(env)
    names = list(dict.fromkeys(names))
    await enforce(request, who, tenant, lambda policy: policy.check_secrets(names, what))
    clash = sorted({k for k, _ in env} & set(names))
    if clash:
        raise BadRequest(f"{what}: {', '.join(clash)} is both in env and a secret named in "
                         "secrets: give it once")
    values = _store(request).values(tenant, names)
    return tuple(sorted([*env, *values.items()]))


def mask_values(request: Request, tenant: str) -> tuple[bytes, ...]:
    """What a tenant's output is masked with: every value of its secrets."""
    return _store(request).mask_values(tenant)


def masked(request: Request, tenant: str, data: bytes) -> bytes:
    return mask(data, mask_values(request, tenant))


def stream_maskers(request: Request, tenant: str) -> tuple[StreamMasker, StreamMasker]:
    """One masker for stdout, one for stderr."""
    values = mask_values(request, tenant)
    return StreamMasker(values), StreamMasker(values)


__all__ = ["expose", "mask_values", "masked", "stream_maskers"]
