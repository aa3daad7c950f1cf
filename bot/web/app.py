"""Starlette app: /healthz, the webhooks, the submission API (bot/web/submissions.py), the job and pipeline pages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bot.host.stores import Runtime
from bot.oidc.types import Verifier
from bot.pipelines.exchange_grants import exchange_url
from bot.web.artifact_exchange import exchange_routes
from bot.web.artifacts import artifact_routes
from bot.web.hooks import open_github_hook, open_gitlab_hook
from bot.web.intake import open_intake
from bot.web.job_spec_api import job_spec_routes
from bot.web.pages import page_routes, scope_of_job
from bot.web.submissions import open_submission_api


def create_app(runtime: Runtime, *, submission_verifier: Verifier | None = None) -> Starlette:
    """`submission_verifier` replaces the OIDC verifier (bench/submissions.py only: never a setting)."""

    async def healthz(_: Request) -> Response:
        try:
            with runtime.store.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:  # the health check reports, it does not crash
            return JSONResponse({"ok": False, "database": f"{type(exc).__name__}"}, status_code=503)
        return JSONResponse({"ok": True, "database": "ok"})

    routes = [Route("/healthz", healthz)]
    intake = None
    if runtime.config.github is not None or runtime.config.gitlab is not None:
        intake = open_intake(runtime)
    # Fail closed: no readable secret, no app (each open_*_hook raises ConfigError). Before the pages:
    # Starlette tries routes in order, and the hooks are the busy ones.
    if runtime.config.github is not None and intake is not None:
        routes.append(Route("/hooks/github", open_github_hook(runtime, intake), methods=["POST"]))
    if runtime.config.gitlab is not None and intake is not None:
        routes.append(Route("/hooks/gitlab", open_gitlab_hook(runtime, intake), methods=["POST"]))
    # No oidc: section, no submission API. Its GET answers to the submission's own read token, not to
    # the pipeline access check (bot/web/access.py), which serves pages.
    submissions = open_submission_api(runtime, submission_verifier) if runtime.config.oidc is not None else None
    routes += submissions.routes if submissions is not None else []
    # Workers on other hosts fetch and upload a job's blobs here, with the job's signed grants only.
    routes += exchange_routes(runtime) if exchange_url() is not None else []
    routes += page_routes(runtime)  # each through the one access check (bot/web/access.py)
    routes += artifact_routes(runtime, scope_of_job)  # a job's log and artifacts, for people: the same check
    routes += job_spec_routes(runtime)  # what `labgate reproduce` needs of a job: the same check

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        if intake is not None:
            await intake.close()
        if submissions is not None:
            await submissions.close()

    return Starlette(routes=routes, lifespan=lifespan)
