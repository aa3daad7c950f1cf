"""Control-queue Celery tasks: start pipelines and record job results (thin wrappers)."""

from __future__ import annotations

from bot import pipeline
from bot.runtime import runtime_from_env
from workers.app import app
from workers.spec import JobResult


@app.task(name=pipeline.START_PIPELINE_TASK)
def start_pipeline(pipeline_id: int) -> None:
    pipeline.start_pipeline(runtime_from_env(), pipeline_id)


@app.task(name="bot.job_started")
def job_started(job_id: int, delivery: int) -> None:
    pipeline.record_started(runtime_from_env(), job_id, delivery)


@app.task(name="bot.record_result")
def record_result(result_json: str) -> None:
    pipeline.record_result(runtime_from_env(), JobResult.model_validate_json(result_json))
