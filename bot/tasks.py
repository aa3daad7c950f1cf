"""Control-queue Celery tasks: start pipelines, forge events, reports (thin wrappers).
Job results are recorded by bot/result_tasks.py, in a worker of their own."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from functools import cache, partial
from typing import NoReturn

from celery import Task

from bot.core.events import event_from_json
from bot.forges.github.client import GitHubApp, classify_error
from bot.forges.github.intake import handle_event
from bot.forges.github.reporter import sync_checks
from bot.forges.github.resync import resync_open_pulls
from bot.forges.gitlab import intake as gitlab_intake
from bot.forges.gitlab.client import GitLabClient
from bot.forges.gitlab.client import classify_error as classify_gitlab_error
from bot.forges.gitlab.reporter import PUSH_SOURCE as GITLAB_PUSH_SOURCE
from bot.forges.gitlab.reporter import SOURCE as GITLAB_SOURCE
from bot.forges.gitlab.reporter import report_to_gitlab
from bot.forges.gitremote.poller import poll_all
from bot.forges.mail.smtp import classify_error as classify_smtp_error
from bot.forges.patchwork.client import classify_error as classify_patchwork_error
from bot.host.retrying import describe, is_transient, retry_delay
from bot.host.stores import Runtime, runtime_from_env
from bot.host.timers import (
    ARTIFACT_PRUNE_TASK,
    GIT_REMOTE_POLL_TASK,
    GITHUB_RESYNC_TASK,
    PATCHWORK_POLL_TASK,
    PLACE_RECHECK_TASK,
    QUEUE_TOP_UP_TASK,
)
from bot.intake.base_maintainers import SERIES_REGRADE_TASK
from bot.intake.mailing_list import is_series_pipeline, poll_patchwork, regrade_series, report_series
from bot.pipelines import lifecycle as pipeline
from bot.pipelines import place_health, retention, scheduler
from bot.pipelines.lifecycle import delivery_status, mark_delivery
from bot.reporting.push_mail import is_staging_poll_pipeline, report_staging_push
from bot.reporting.sync import pipeline_source
from bot.result_tasks import pipeline_guard
from workers.app import app
from workers.errors import ConfigError

log = logging.getLogger(__name__)
# Each forge adapter's reading of its own errors (which mean "later", and how much later).
CLASSIFIERS = (classify_error, classify_gitlab_error, classify_patchwork_error, classify_smtp_error)


@app.task(name=pipeline.START_PIPELINE_TASK)
def start_pipeline(pipeline_id: int) -> None:
    with pipeline_guard(lambda: pipeline_id):
        pipeline.start_pipeline(runtime_from_env(), pipeline_id)


@cache
def github_app() -> GitHubApp:
    config = runtime_from_env().config.github
    if config is None:
        raise ConfigError("a GitHub event arrived but the config has no `github:` section")
    return GitHubApp(
        config.app_id, config.read_private_key(), config.api_url, write_interval_s=config.write_interval_s
    )


@cache
def gitlab_client() -> GitLabClient:
    config = runtime_from_env().config.gitlab
    if config is None:
        raise ConfigError("a GitLab event arrived but the config has no `gitlab:` section")
    return GitLabClient(config.url, config.read_token(), write_interval_s=config.write_interval_s)


def retry_or_fail(task: Task, exc: BaseException, runtime: Runtime, on_give_up: Callable[[str], None]) -> NoReturn:
    """Raise Celery's Retry after a forge or infrastructure error, with backoff; else (or once the
    retries are spent) record why on `on_give_up` and re-raise. The tasks are idempotent, so a
    retry repeats nothing the first attempt did (bot/store/once.py, bot/forges/github/reporter.py)."""
    retries = runtime.config.retries
    attempt = task.request.retries
    if is_transient(exc, CLASSIFIERS) and attempt < retries.attempts:
        delay = retry_delay(attempt, exc, base_s=retries.base_s, max_s=retries.max_s, classifiers=CLASSIFIERS)
        log.warning("%s: %s; retry %d of %d in %.1f s", task.name, describe(exc), attempt + 1, retries.attempts, delay)
        raise task.retry(exc=exc, countdown=delay, max_retries=retries.attempts)
    log.error("%s: %s; giving up after %d attempts", task.name, describe(exc), attempt + 1)
    with contextlib.suppress(Exception):  # the store may be what failed
        on_give_up(f"failed after {attempt + 1} attempts: {describe(exc)}")
    raise exc


@app.task(name="bot.github_event", bind=True)
def github_event(self: Task, event_json: str, delivery_id: str) -> None:
    runtime = runtime_from_env()
    if delivery_status(runtime, "github", delivery_id) == "handled":
        return  # a message Celery delivered again after the first run committed
    try:
        done = handle_event(runtime, github_app(), event_from_json(event_json), delivery_id)
    except Exception as exc:
        retry_or_fail(self, exc, runtime, partial(mark_delivery, runtime, "github", delivery_id, "failed"))
    log.info("github delivery %s: %s", delivery_id, "; ".join(done))
    mark_delivery(runtime, "github", delivery_id, "handled", "\n".join(done))


@app.task(name="bot.gitlab_event", bind=True)
def gitlab_event(self: Task, event_json: str, delivery_id: str) -> None:
    runtime = runtime_from_env()
    if delivery_status(runtime, GITLAB_SOURCE, delivery_id) == "handled":
        return  # a message Celery delivered again after the first run committed
    try:
        done = gitlab_intake.handle_event(runtime, gitlab_client(), event_from_json(event_json), delivery_id)
    except Exception as exc:
        retry_or_fail(self, exc, runtime, partial(mark_delivery, runtime, GITLAB_SOURCE, delivery_id, "failed"))
    log.info("gitlab delivery %s: %s", delivery_id, "; ".join(done))
    mark_delivery(runtime, GITLAB_SOURCE, delivery_id, "handled", "\n".join(done))


@app.task(name=pipeline.REPORT_TASK, bind=True)
def report(self: Task, pipeline_id: int) -> None:
    """Bring the forge's view of a pipeline up to date (idempotent: repeats send nothing)."""
    runtime = runtime_from_env()
    try:
        if runtime.config.patchwork is not None and is_series_pipeline(runtime, pipeline_id):
            report_series(runtime, pipeline_id)  # checks on every patch; once done, the mail
        elif is_staging_poll_pipeline(runtime, pipeline_id):
            report_staging_push(runtime, pipeline_id)  # once done, the mail (the page shows it meanwhile)
        elif pipeline_source(runtime, pipeline_id) in (GITLAB_SOURCE, GITLAB_PUSH_SOURCE):
            if runtime.config.gitlab is not None:
                report_to_gitlab(runtime, gitlab_client(), pipeline_id)
        elif runtime.config.github is not None:
            sync_checks(runtime, github_app(), pipeline_id)
    except Exception as exc:
        retry_or_fail(self, exc, runtime, lambda why: log.error("report of pipeline %d: %s", pipeline_id, why))


def _run_logged(task: Task, what: str, body: Callable[[Runtime], list[str]]) -> None:
    """A control task's body (a timer's, bot/host/timers.py, or a regrade): retried, its lines logged."""
    runtime = runtime_from_env()
    try:
        done = body(runtime)
    except Exception as exc:
        retry_or_fail(task, exc, runtime, lambda why: log.error("%s: %s", what, why))
    if done:
        log.info("%s: %s", what, "; ".join(done))


@app.task(name=GITHUB_RESYNC_TASK, bind=True)
def github_resync(self: Task) -> None:
    """Handle open pull requests' heads no webhook told of (bot/forges/github/resync.py)."""
    _run_logged(self, "resync", lambda rt: resync_open_pulls(rt, github_app()) if rt.config.github else [])


@app.task(name=GIT_REMOTE_POLL_TASK, bind=True)
def git_remote_poll(self: Task) -> None:
    """Staging branches of trees without webhooks (bot/forges/gitremote/poller.py)."""
    _run_logged(self, "git remote poll", poll_all)


@app.task(name=SERIES_REGRADE_TASK, bind=True)
def series_regrade(self: Task, server: str, series_id: int) -> None:
    """A series graded again once MAINTAINERS at its base has come (bot/intake/base_maintainers.py)."""
    _run_logged(self, f"series {series_id} regrade", lambda runtime: regrade_series(runtime, server, series_id))


@app.task(name=PATCHWORK_POLL_TASK, bind=True)
def patchwork_poll(self: Task) -> None:
    """Each configured Patchwork project's new events, carried out (bot/intake/mailing_list.py)."""
    _run_logged(self, "patchwork poll", lambda runtime: poll_patchwork(runtime) if runtime.config.patchwork else [])


@app.task(name=QUEUE_TOP_UP_TASK, bind=True)
def queue_top_up(self: Task) -> None:
    """Every device class's window filled from the jobs waiting in the store (bot/pipelines/scheduler.py)."""
    _run_logged(self, "queue top-up", scheduler.top_up)


@app.task(name=PLACE_RECHECK_TASK, bind=True)
def place_health_recheck(self: Task) -> None:
    """A health check again for each offline place whose last one failed long enough ago (place_health.py)."""
    _run_logged(self, "place health recheck", place_health.recheck_due)


@app.task(name=ARTIFACT_PRUNE_TASK, bind=True)
def artifact_prune(self: Task) -> None:
    """Blobs that only expired pipelines name, deleted once idle (bot/pipelines/retention.py)."""
    _run_logged(self, "artifact prune", retention.prune_due)
