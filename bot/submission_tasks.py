"""Control-queue task of CI submissions (POST /api/v1/submissions): make the submission's pipeline, once."""

from __future__ import annotations

import logging
from functools import partial

from celery import Task

from bot.host.stores import runtime_from_env
from bot.intake.submissions import SUBMISSION_TASK, make_pipeline, refuse_submission
from bot.tasks import retry_or_fail
from workers.app import app
from workers.errors import UserError

log = logging.getLogger(__name__)


@app.task(name=SUBMISSION_TASK, bind=True)
def ci_submission(self: Task, submission_id: int) -> None:
    """Idempotent (bot/intake/submissions.py make_pipeline): a retry or a second message makes no second pipeline.
    A submission that cannot be tested (its tree is gone, a patch over the cap) is told so, not retried."""
    runtime = runtime_from_env()
    try:
        done = make_pipeline(runtime, submission_id)
    except UserError as exc:
        refuse_submission(runtime, submission_id, str(exc))
        log.info("submission %d: refused: %s", submission_id, exc)
        return
    except Exception as exc:
        retry_or_fail(self, exc, runtime, partial(refuse_submission, runtime, submission_id))
    log.info("%s", done)
