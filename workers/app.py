"""The Celery app: queues, routing, acks_late, prefetch 1, Redis visibility timeout."""

from __future__ import annotations

import os
from pathlib import Path

import redis
from celery import Celery

CONTROL_QUEUE = "control"
CHECKOUT_QUEUE = "checkout"
BUILD_QUEUE = "build"
# Redis redelivers an unacknowledged message after this long; it must exceed
# the longest job, or a slow build would run twice at once.
VISIBILITY_MARGIN_S = 600

app = Celery("labgate", set_as_current=False)


def lab_queue(device_class: str) -> str:
    return f"lab.{device_class}"


def configure(broker_url: str, *, longest_job_s: int) -> Celery:
    """Configure the one app; called by every process before it sends or serves tasks."""
    # Drop pooled connections to a previous broker (a process that configures twice, as tests do),
    # and the cached objects holding them (the control mailbox keeps its producer pool).
    app.close()
    for cached in ("amqp", "control"):
        app.__dict__.pop(cached, None)
    app.conf.update(
        broker_url=broker_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": longest_job_s + VISIBILITY_MARGIN_S},
        result_backend=None,
        task_ignore_result=True,  # results travel as control tasks, never .get()
        task_acks_late=True,  # a job is acknowledged when it ends, not when it starts
        task_reject_on_worker_lost=True,  # a killed worker's job goes back on the queue
        worker_prefetch_multiplier=1,  # a long build must not hold a second job hostage
        task_default_queue=CONTROL_QUEUE,
        task_create_missing_queues=True,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        imports=["workers.tasks"],
    )
    return app


def configure_from_env() -> Celery:
    """Worker processes learn the broker and data dir from their environment."""
    url = os.environ.get("LABGATE_BROKER_URL")
    if url:
        configure(url, longest_job_s=int(os.environ.get("LABGATE_LONGEST_JOB_S", "1800")))
    return app


def data_dir_from_env() -> Path:
    return Path(os.environ.get("LABGATE_DATA_DIR", ".labgate-data")).resolve()


def broker_redis(url: str) -> redis.Redis:
    """A plain Redis client on the broker, for counters the workers keep."""
    if url.startswith("redis+socket://"):
        return redis.Redis(unix_socket_path=url.removeprefix("redis+socket://"))
    return redis.Redis.from_url(url)


configure_from_env()
