"""/v1/suites/{suite}: a suite's counts, and cancelling it. Suite names are per tenant: a tenant
key reaches only its tenant's suite of that name (another tenant's answers 404, as a name
nobody used); an admin names the tenant with `?tenant=` when several have the name."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from tryfleet.scheduler.ledger_reads import AmbiguousId

from ..auth import needs
from ..keys import Principal, Scope
from ..ledger import read_tenant, view
from ..problems import documented, not_found
from .iteration_models import CancelOut, SuiteOut

router = APIRouter(prefix="/v1/suites", tags=["suites"])
Reader = Annotated[Principal, Depends(needs(Scope.READ, Scope.BATCH))]
Submitter = Annotated[Principal, Depends(needs(Scope.BATCH))]
SuiteName = Annotated[str, Path(max_length=128, description="the tenant's own suite name")]
TenantQ = Annotated[str | None, Query(max_length=64, description="admins only: whose")]
ONE = documented(400, 401, 403, 404, 422, 503)


def _suite(request: Request, who: Principal, name: str, tenant: str | None) -> dict[str, Any]:
    ledger = view(request)
    whose = read_tenant(who, tenant)
    owners = [whose] if whose is not None else ledger.suite_tenants(name)
    if len(owners) > 1:
        raise AmbiguousId(f"suite {name!r} exists for several tenants "
                          f"({', '.join(owners[:10])}): name one with ?tenant=")
    found = ledger.suite(owners[0], name) if owners else None
    if found is None:
        raise not_found(f"suite {name!r}")  # the same for another tenant's and nobody's
    return found


@router.get("/{suite}", summary="A suite and how many of its iterations are in each state",
            responses=ONE)
async def get_suite(suite: SuiteName, who: Reader, request: Request,
                    tenant: TenantQ = None) -> SuiteOut:
    found = _suite(request, who, suite, tenant)
    counts = view(request).counts(suite, found["tenant"])
    return SuiteOut(suite=found["name"], tenant=found["tenant"], created_at=found["created_at"],
                    max_iterations=found["max_iterations"], max_wall_s=found["max_wall_s"],
                    counts=counts, total=sum(counts.values()))


@router.post("/{suite}/cancel", summary="Cancel a suite: its queued and running iterations",
             responses=ONE)
async def cancel_suite(suite: SuiteName, who: Submitter, request: Request,
                       tenant: TenantQ = None) -> CancelOut:
    found = _suite(request, who, suite, tenant)
    got = await request.app.state.fleet.sched("cancel", None, suite, found["tenant"])
    return CancelOut(**got)


__all__ = ["router"]
