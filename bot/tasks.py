"""Control-queue Celery tasks: start pipelines and record job results (thin wrappers)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from bot import pipeline
from bot.runtime import runtime_from_env
from workers.app import app
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
            pipeline.fail_pipeline(runtime_from_env(), target,
                                   f"labgate control error: {type(exc).__name__}: {exc}")  # fmt: skip
        raise


@app.task(name=pipeline.START_PIPELINE_TASK)
def start_pipeline(pipeline_id: int) -> None:
    with pipeline_guard(lambda: pipeline_id):
        pipeline.start_pipeline(runtime_from_env(), pipeline_id)


@app.task(name="bot.job_started")
def job_started(job_id: int, delivery: int) -> None:
    pipeline.record_started(runtime_from_env(), job_id, delivery)


@app.task(name="bot.record_result")
def record_result(result_json: str) -> None:
    result = JobResult.model_validate_json(result_json)
    with pipeline_guard(lambda: pipeline.pipeline_of_job(runtime_from_env(), result.job_id)):
        pipeline.record_result(runtime_from_env(), result)
