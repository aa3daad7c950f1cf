"""Control-queue Celery tasks: start pipelines, forge events, reports (thin wrappers).
Job results are recorded by bot/result_tasks.py, in a worker of their own."""

from __future__ import annotations

import logging
from functools import cache

from bot import pipeline
from bot.core.events import event_from_json
from bot.forges.github.client import GitHubApp
from bot.forges.github.intake import handle_event
from bot.forges.github.reporter import sync_checks
from bot.pipeline import mark_delivery
from bot.result_tasks import pipeline_guard
from bot.runtime import runtime_from_env
from workers.app import app
from workers.errors import ConfigError

log = logging.getLogger(__name__)


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


@app.task(name="bot.github_event")
def github_event(event_json: str, delivery_id: str) -> None:
    runtime = runtime_from_env()
    done = handle_event(runtime, github_app(), event_from_json(event_json))
    log.info("github delivery %s: %s", delivery_id, "; ".join(done))
    mark_delivery(runtime, "github", delivery_id, "handled", "\n".join(done))


@app.task(name=pipeline.REPORT_TASK)
def report(pipeline_id: int) -> None:
    """Bring the forge's view of a pipeline up to date (idempotent: repeats send nothing)."""
    runtime = runtime_from_env()
    if runtime.config.github is not None:
        sync_checks(runtime, github_app(), pipeline_id)
