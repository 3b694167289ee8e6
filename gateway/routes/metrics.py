"""/metrics: the whole fleet's Prometheus metrics (gateway/metrics.py says what is in it).

It names hosts, tenants and suites, so it needs a key: an admin's, or one with the `metrics`
scope, which may do nothing else (`tryfleet key create --tenant ops --scope metrics`).
Prometheus sends it as `Authorization: Bearer <key>` (its scrape config's `authorization`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

from ..auth import needs
from ..keys import Principal, Scope
from ..metrics import exposition
from ..problems import documented

router = APIRouter()
Scraper = Annotated[Principal, Depends(needs(Scope.METRICS))]


@router.get("/metrics", tags=["meta"], response_class=Response,
            summary="The fleet's metrics in Prometheus's text format; needs an admin key or "
                    "one with the `metrics` scope",
            responses={200: {"content": {CONTENT_TYPE_PLAIN_0_0_4: {}},
                             "description": "Prometheus text exposition format 0.0.4"},
                       **documented(401, 403)})
async def metrics(request: Request, who: Scraper) -> Response:
    state = request.app.state
    return Response(await exposition(state.fleet, state.audit), media_type=CONTENT_TYPE_PLAIN_0_0_4)
