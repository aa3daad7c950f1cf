"""Control-queue Celery tasks: start pipelines and record job results (thin wrappers)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache

from celery import Task

from bot import pipeline, steering
from bot.core.events import event_from_json
from bot.forges.github.client import GitHubApp
from bot.forges.github.intake import handle_event
from bot.forges.github.reporter import sync_checks
from bot.pipeline import mark_delivery
from bot.runtime import runtime_from_env
from workers.app import RESULTS_QUEUE, app
from workers.errors import ConfigError
from workers.spec import JobResult

log = logging.getLogger(__name__)


@contextmanager
def pipeline_guard(pipeline_id: Callable[[], int | None]) -> Iterator[None]:
    """A crash in the control path ends the pipeline as an infra error instead of hanging it."""
    try:
        yield
    except Exception as exc:
        log.exception("control task failed")
        target = pipeline_id()
        if target is not None:
            steering.fail_pipeline(runtime_from_env(), target,
                                   f"labgate control error: {type(exc).__name__}: {exc}")  # fmt: skip
        raise


def arrived_on_results(task: Task) -> bool:
    """Job workers may write only to the results queue: anything but a result found there is refused."""
    info = task.request.delivery_info or {}
    if info.get("routing_key") == RESULTS_QUEUE:
        log.warning("refused %s from the results queue (only job results travel there)", task.name)
        return True
    return False


@app.task(name=pipeline.START_PIPELINE_TASK, bind=True)
def start_pipeline(self: Task, pipeline_id: int) -> None:
    if arrived_on_results(self):
        return
    with pipeline_guard(lambda: pipeline_id):
        pipeline.start_pipeline(runtime_from_env(), pipeline_id)


@app.task(name="bot.job_started")
def job_started(job_id: int, delivery: int, token: str = "") -> None:
    pipeline.record_started(runtime_from_env(), job_id, delivery, token)


@app.task(name="bot.record_result")
def record_result(result_json: str) -> None:
    result = JobResult.model_validate_json(result_json)
    with pipeline_guard(lambda: pipeline.pipeline_of_job(runtime_from_env(), result.job_id)):
        pipeline.record_result(runtime_from_env(), result)


@cache
def github_app() -> GitHubApp:
    config = runtime_from_env().config.github
    if config is None:
        raise ConfigError("a GitHub event arrived but the config has no `github:` section")
    return GitHubApp(
        config.app_id, config.read_private_key(), config.api_url, write_interval_s=config.write_interval_s
    )


@app.task(name="bot.github_event", bind=True)
def github_event(self: Task, event_json: str, delivery_id: str) -> None:
    if arrived_on_results(self):
        return
    runtime = runtime_from_env()
    done = handle_event(runtime, github_app(), event_from_json(event_json))
    log.info("github delivery %s: %s", delivery_id, "; ".join(done))
    mark_delivery(runtime, "github", delivery_id, "handled", "\n".join(done))


@app.task(name=pipeline.REPORT_TASK, bind=True)
def report(self: Task, pipeline_id: int) -> None:
    """Bring the forge's view of a pipeline up to date (idempotent: repeats send nothing)."""
    if arrived_on_results(self):
        return
    runtime = runtime_from_env()
    if runtime.config.github is not None:
        sync_checks(runtime, github_app(), pipeline_id)
