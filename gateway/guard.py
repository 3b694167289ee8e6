"""Policy checks at the gateway's edge, each denial audited before it is answered.

Every way in (the /v1 routes, the E2B API, the MCP tools, which call the /v1 route functions)
checks a tenant's policy through `enforce`, so a denial is the same 403 naming the rule
everywhere, and leaves one `policy.deny` record in the audit trail.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from tryfleet.errors import PolicyDenied

from .auditing import call_of
from .keys import Principal
from .policy import TenantPolicy


async def record_denial(request: Request, who: Principal, tenant: str,
                        err: PolicyDenied) -> None:
    """A `policy.deny` record of the refusal (none when the app has no audit trail, as in
    tests of the routes alone). AuditUnavailable propagates: the answer is then a 503."""
    await call_of(request).record("policy.deny", tenant=tenant, outcome=err.rule,
                                  details={"rule": err.rule, "detail": str(err)[:1000],
                                           "route": request.url.path})


async def enforce(request: Request, who: Principal, tenant: str,
                  check: Callable[[TenantPolicy], None]) -> TenantPolicy:
    """The tenant's policy, after `check` passed on it; PolicyDenied (audited) otherwise."""
    policy: TenantPolicy = request.app.state.policies.for_tenant(tenant)
    try:
        check(policy)
    except PolicyDenied as err:
        await record_denial(request, who, tenant, err)
        raise
    return policy


__all__ = ["enforce", "record_denial"]
