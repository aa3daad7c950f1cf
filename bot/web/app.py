"""Starlette app: /healthz and the job and pipeline pages."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bot.core.render import outcome_word, render_counts
from bot.runtime import Runtime
from bot.store.models import Job, Pipeline
from bot.views import job_view, read_log
from bot.web.hooks import github_hook, open_intake

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(["html"]),
)
TEMPLATES.globals.update(outcome_word=outcome_word, render_counts=render_counts)
# Firmware and kernels write terminal escapes (SeaBIOS clears the screen); a page shows text.
_TERMINAL_ESCAPES = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[@-~])|[\x00-\x08\x0b-\x1f\x7f]")
TEMPLATES.filters["printable"] = lambda text: _TERMINAL_ESCAPES.sub("", text or "")
PAGE_LOG_BYTES = 2 * 1024 * 1024


def create_app(runtime: Runtime) -> Starlette:
    async def healthz(_: Request) -> Response:
        try:
            with runtime.store.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:  # the health check reports, it does not crash
            return JSONResponse({"ok": False, "database": f"{type(exc).__name__}"}, status_code=503)
        return JSONResponse({"ok": True, "database": "ok"})

    async def job_page(request: Request) -> Response:
        job_id = _int_param(request, "job_id")
        if job_id is None:
            return PlainTextResponse("job id must be a number\n", status_code=400)
        with runtime.store.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                return PlainTextResponse(f"no job {job_id}\n", status_code=404)
            view = job_view(runtime, job)
            revision = job.pipeline.revision
            context = {
                "job": view, "db_job": job, "pipeline": job.pipeline, "revision": revision,
                "tree": revision.change.tree, "tests": list(job.tests),
                "log": read_log(runtime, job.log_digest, PAGE_LOG_BYTES),
            }  # fmt: skip
            body = TEMPLATES.get_template("job.html").render(**context)
        return HTMLResponse(body)

    async def job_log(request: Request) -> Response:
        job_id = _int_param(request, "job_id")
        with runtime.store.session() as session:
            job = session.get(Job, job_id) if job_id is not None else None
            if job is None or not job.log_digest:
                return PlainTextResponse("no such log\n", status_code=404)
            digest = job.log_digest
        return PlainTextResponse(read_log(runtime, digest, runtime.config.caps.max_log_bytes))

    async def pipeline_page(request: Request) -> Response:
        pipeline_id = _int_param(request, "pipeline_id")
        with runtime.store.session() as session:
            pipeline = session.get(Pipeline, pipeline_id) if pipeline_id is not None else None
            if pipeline is None:
                return PlainTextResponse(f"no pipeline {html.escape(str(pipeline_id))}\n", status_code=404)
            jobs = [job_view(runtime, j, with_logs=False) for j in pipeline.jobs]
            body = TEMPLATES.get_template("pipeline.html").render(
                pipeline=pipeline, revision=pipeline.revision, tree=pipeline.revision.change.tree, jobs=jobs
            )
        return HTMLResponse(body)

    routes = [
        Route("/healthz", healthz),
        Route("/jobs/{job_id}", job_page),
        Route("/jobs/{job_id}/log", job_log),
        Route("/pipelines/{pipeline_id}", pipeline_page),
    ]
    intake = None
    if runtime.config.github is not None:
        # Fail closed: no readable secret, no app (read_webhook_secret raises ConfigError).
        secret = runtime.config.github.read_webhook_secret()
        intake = open_intake(runtime)
        routes.append(Route("/hooks/github", github_hook(intake, secret), methods=["POST"]))

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        if intake is not None:
            await intake.close()

    return Starlette(routes=routes, lifespan=lifespan)


def _int_param(request: Request, name: str) -> int | None:
    try:
        return int(request.path_params[name])
    except (KeyError, ValueError):
        return None
