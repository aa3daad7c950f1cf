"""The pipeline and job pages, each behind the access check of bot/web/access.py (the log and artifacts:
bot/web/artifacts.py)."""

from __future__ import annotations

import re
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Select, select
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from bot.core.render import outcome_word, render_counts
from bot.host.stores import Runtime
from bot.pipelines.retention import pruned_on
from bot.pipelines.retries import attempts_of
from bot.reporting.page_links import read_link_key
from bot.reporting.pipeline_views import job_view, read_log
from bot.store.models import Change, Job, Pipeline, Revision, Tree
from bot.web.access import Grant, Scope, not_found, pipeline_route
from bot.web.artifacts import artifact_listing

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(["html"]),
)
TEMPLATES.globals.update(outcome_word=outcome_word, render_counts=render_counts)
# Firmware and kernels write terminal escapes (SeaBIOS clears the screen); a page shows text.
_TERMINAL_ESCAPES = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[@-~])|[\x00-\x08\x0b-\x1f\x7f]")
TEMPLATES.filters["printable"] = lambda text: _TERMINAL_ESCAPES.sub("", text or "")
PAGE_LOG_BYTES = 2 * 1024 * 1024


def scope_of_job(runtime: Runtime, ids: dict[str, int]) -> Scope | None:
    return _scope(runtime, select(Pipeline.id, Tree.name).join(Job, Job.pipeline_id == Pipeline.id)
                  .where(Job.id == ids["job_id"]))  # fmt: skip


def scope_of_pipeline(runtime: Runtime, ids: dict[str, int]) -> Scope | None:
    return _scope(runtime, select(Pipeline.id, Tree.name).where(Pipeline.id == ids["pipeline_id"]))


def _scope(runtime: Runtime, query: Select[int, str]) -> Scope | None:
    # One query whether or not the row exists: a hidden pipeline should not answer slower than a missing one.
    query = query.join(Revision, Pipeline.revision_id == Revision.id).join(Change).join(Tree)
    with runtime.store.session() as session:
        found = session.execute(query).first()
    return Scope(found[0], found[1]) if found is not None else None


def page_routes(runtime: Runtime) -> list[Route]:
    """Every route that serves a pipeline's data; each one through `pipeline_route`."""
    if any(tree.private for tree in runtime.config.trees):
        read_link_key(runtime.config, runtime.data_dir)  # a bad key file stops the start, not a page view

    async def job_page(_: Request, ids: dict[str, int], grant: Grant) -> Response:
        with runtime.store.session() as session:
            job = session.get(Job, ids["job_id"])
            if job is None:
                return not_found()
            revision = job.pipeline.revision
            context = {
                "job": job_view(runtime, job), "db_job": job, "pipeline": job.pipeline, "revision": revision,
                "tree": revision.change.tree, "tests": list(job.tests),
                "log": read_log(runtime, job.log_digest, PAGE_LOG_BYTES), "link": grant.link,
                "attempts": attempts_of(session, job.id),  # earlier attempts the lab retried: where, and why
                "artifacts": artifact_listing(runtime, job.id, job.outputs), "pruned_on": pruned_on(job.outputs),
            }  # fmt: skip
            body = TEMPLATES.get_template("job.html").render(**context)
        return HTMLResponse(body)

    async def pipeline_page(_: Request, ids: dict[str, int], grant: Grant) -> Response:
        with runtime.store.session() as session:
            pipeline = session.get(Pipeline, ids["pipeline_id"])
            if pipeline is None:
                return not_found()
            jobs = [job_view(runtime, j, with_logs=False) for j in pipeline.jobs]
            body = TEMPLATES.get_template("pipeline.html").render(
                pipeline=pipeline, revision=pipeline.revision, tree=pipeline.revision.change.tree, jobs=jobs,
                link=grant.link,
            )  # fmt: skip
        return HTMLResponse(body)

    return [
        pipeline_route(runtime, "/jobs/{job_id}", scope_of_job, job_page),
        pipeline_route(runtime, "/pipelines/{pipeline_id}", scope_of_pipeline, pipeline_page),
    ]
