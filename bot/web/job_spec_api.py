"""GET /api/v1/jobs/{job_id}/spec: what reproducing one job needs (bot/core/reproduce.py), as JSON.

Behind the access check of every pipeline's data (bot/web/access.py): a private tree's job answers only to
its pipeline's signed link or an operator token. A job that does not exist and one hidden from the caller
get the very 404 of every page (bot/web/access.py): `labgate reproduce` says what it may mean.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bot.host.stores import Runtime
from bot.pipelines.job_specs import UnreadableSpec, read_job_spec
from bot.web.access import Grant, not_found, pipeline_route
from bot.web.pages import scope_of_job

JOB_SPEC_ROUTE = "/api/v1/jobs/{job_id}/spec"
log = logging.getLogger(__name__)


def job_spec_routes(runtime: Runtime) -> list[Route]:
    async def job_spec(_: Request, ids: dict[str, int], __: Grant) -> Response:
        try:
            doc = read_job_spec(runtime, ids["job_id"])
        except UnreadableSpec as exc:
            log.warning("%s", exc)
            return JSONResponse({"error": str(exc)}, status_code=409)
        if doc is None:
            return not_found()
        return JSONResponse(doc.model_dump(mode="json"))

    return [pipeline_route(runtime, JOB_SPEC_ROUTE, scope_of_job, job_spec)]
