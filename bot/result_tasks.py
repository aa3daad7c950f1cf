"""The results queue's only tasks: a job started, a job waits for a place, a job's result, a file read at a
base. Nothing else runs there.

Job workers can write to the results queue and nowhere else on the control side. The
worker that consumes it imports this module alone, so a message naming any other task
(start a pipeline, a forged forge event) is discarded as unregistered, never run: what a
message says about its own routing is the sender's word and decides nothing. Each
message must also carry its job's (or request's) token (bot/pipelines/lifecycle.py), or it is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from bot.host.stores import runtime_from_env
from bot.intake import base_maintainers
from bot.pipelines import lifecycle as pipeline
from bot.pipelines import steering
from workers.app import CONTROL_QUEUE, app
from workers.spec import BASE_FILE_READ_TASK, BaseFileAnswer, JobResult

log = logging.getLogger(__name__)
JOB_STARTED_TASK = "bot.job_started"
JOB_WAITING_TASK = "bot.job_waiting"
RECORD_RESULT_TASK = "bot.record_result"


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


@app.task(name=JOB_STARTED_TASK)
def job_started(job_id: int, delivery: int, token: str = "") -> None:
    pipeline.record_started(runtime_from_env(), job_id, delivery, token)


@app.task(name=JOB_WAITING_TASK)
def job_waiting(job_id: int, token: str, why: str) -> None:
    pipeline.record_waiting(runtime_from_env(), job_id, token, why)


@app.task(name=BASE_FILE_READ_TASK)
def base_file_read(answer_json: str) -> None:
    """A file the checkout worker read at a series' base (bot/intake/base_maintainers.py): kept if it
    holds its request's token, then the series is graded again on the control queue."""
    regrade = base_maintainers.record_answer(runtime_from_env(), BaseFileAnswer.model_validate_json(answer_json))
    if regrade is not None:
        app.send_task(base_maintainers.SERIES_REGRADE_TASK, args=list(regrade), queue=CONTROL_QUEUE)


@app.task(name=RECORD_RESULT_TASK)
def record_result(result_json: str) -> None:
    result = JobResult.model_validate_json(result_json)
    with pipeline_guard(lambda: pipeline.pipeline_of_job(runtime_from_env(), result.job_id)):
        pipeline.record_result(runtime_from_env(), result)
