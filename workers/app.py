"""The Celery app: queues, routing, acks_late, prefetch 1, Redis visibility timeout."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from celery import Celery
from celery.app.defaults import DEFAULTS
from kombu import Exchange, Queue

from workers.errors import ConfigError

CONTROL_QUEUE = "control"
# Job workers send their results here, never to `control`: the control worker accepts only
# result messages from this queue, so a hostile worker cannot start or steer anything.
RESULTS_QUEUE = "results"
CHECKOUT_QUEUE = "checkout"
BUILD_QUEUE = "build"
# Redis redelivers an unacknowledged message after this long; it must exceed
# the longest job, or a slow build would run twice at once.
VISIBILITY_MARGIN_S = 600
# A process's role picks its broker user's keys; job workers' environment names theirs.
CONTROL_ROLE = CONTROL_QUEUE
WORKER_ROLE_ENV = "LABGATE_WORKER_ROLE"
# Device class names as the config allows them: no glob, '@' or ':' to blur key patterns. A lab worker
# may serve several classes (boards of a rack, one host): its role names their queues joined by '+',
# which no class name holds.
_LAB_QUEUE = r"lab\.[a-z0-9][a-z0-9._-]*"
_LAB_ROLE = re.compile(rf"{_LAB_QUEUE}(\+{_LAB_QUEUE})*")
LAB_ROLE_SEPARATOR = "+"

app = Celery("labgate", set_as_current=False)


def lab_queue(device_class: str) -> str:
    return f"lab.{device_class}"


def is_job_role(role: str) -> bool:
    """checkout, build or lab.<device class>[+lab.<device class>...]: the roles whose workers run strangers' code."""
    return role in (CHECKOUT_QUEUE, BUILD_QUEUE) or _LAB_ROLE.fullmatch(role) is not None


def role_queues(role: str) -> list[str]:
    """The queues a job role's workers consume: its own name, or each class of a lab role serving several."""
    return role.split(LAB_ROLE_SEPARATOR)


def unacked_keys(role: str) -> dict[str, str]:
    """Kombu's unacked hash, index and mutex for a role, as broker_transport_options."""
    if role == CONTROL_ROLE:
        # The control side keeps kombu's default names: its in-flight messages survive the upgrade,
        # and the web intake's fast path (bot/web/hooks.py) needs options that change no key.
        return {}
    # Kombu keeps every consumer's in-flight messages in one hash by default: a build worker could
    # read lab jobs' messages (and their secrets) there. One set of keys per role, which its ACL
    # user alone may touch (bot/host/broker_acl.py).
    return {"unacked_key": f"unacked:{role}", "unacked_index_key": f"unacked_index:{role}",
            "unacked_mutex_key": f"unacked_mutex:{role}"}  # fmt: skip


def delivery_key_prefix(role: str) -> str:
    return f"labgate:deliveries:{role}:"


def delivery_key(role: str, job_id: int, token: str) -> str:
    """The counter of a job's deliveries, in its role's own keys. It names the job's token (a digest
    of it): a hostile worker of the role cannot pre-count jobs that do not exist yet, whose
    tokens it cannot know, and so cannot make them look lost before they run."""
    return f"{delivery_key_prefix(role)}{job_id}:{hashlib.sha256(token.encode()).hexdigest()[:16]}"


def configured_role() -> str:
    """The role this process was configured for (control unless configured otherwise)."""
    return str(app.conf.get("labgate_worker_role") or CONTROL_ROLE)


def _job_role_conf(role: str) -> dict[str, Any]:
    # A job worker's ACL user may write no queue binding but its pidbox node's: Celery would
    # SADD `_kombu.binding.<queue>` when it consumes its queue or sends to `results` (no reader
    # needs them: Celery sends to direct queues through the default exchange).
    queues = [Queue(name, Exchange(name), name, no_declare=True) for name in (*role_queues(role), RESULTS_QUEUE)]
    # Without x-expires the pidbox node queue is bound by a plain SADD, not by kombu's binding
    # scripts (EVALSHA, SCRIPT LOAD) that also sweep other exchanges' binding tables.
    return {"task_queues": queues, "control_queue_expires": None}


def configure(broker_url: str, *, longest_job_s: int, role: str | None = None) -> Celery:
    """Configure the one app; called by every process before it sends or serves tasks.
    The role (env LABGATE_WORKER_ROLE unless given, default control) picks the broker keys."""
    role = role or os.environ.get(WORKER_ROLE_ENV) or CONTROL_ROLE
    if role != CONTROL_ROLE and not is_job_role(role):
        raise ConfigError(f"{WORKER_ROLE_ENV}={role!r}: not control, checkout, build or lab.<device class>")
    # Drop pooled connections to a previous broker (a process that configures twice, as tests do),
    # and the cached objects holding them (the control mailbox keeps its producer pool).
    app.close()
    for cached in ("amqp", "control"):
        app.__dict__.pop(cached, None)
    role_conf = _job_role_conf(role) if is_job_role(role) else {
        "task_queues": None, "control_queue_expires": DEFAULTS["control_queue_expires"]}  # fmt: skip
    app.conf.update(
        labgate_worker_role=role,
        **role_conf,
        broker_url=broker_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": longest_job_s + VISIBILITY_MARGIN_S, **unacked_keys(role)},
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


def work_dir_from_env() -> Path:
    """A job worker's own directory (mirrors, job dirs, slot locks); never the control's data dir."""
    explicit = os.environ.get("LABGATE_WORK_DIR")
    return Path(explicit).resolve() if explicit else data_dir_from_env() / "worker"


def artifacts_dir_from_env() -> Path:
    explicit = os.environ.get("LABGATE_ARTIFACTS_DIR")
    return Path(explicit).resolve() if explicit else data_dir_from_env() / "artifacts"


def broker_socket_kwargs(url: str) -> dict[str, Any] | None:
    """redis-py arguments for a `redis+socket://[user:password@]/path/redis.sock[?virtual_host=N]`
    URL, read the way kombu reads it; None for any other URL."""
    if not url.startswith("redis+socket://"):
        return None
    # kombu parses what follows `redis+` as an http-style URL with an empty host.
    parts = urlsplit("socket://" + url.removeprefix("redis+socket://"))
    query = dict(parse_qsl(parts.query))
    return {
        "unix_socket_path": unquote(parts.path),
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "db": int(query.get("virtual_host") or 0),
    }


def broker_redis(url: str) -> redis.Redis:
    """A plain Redis client on the broker, for counters the workers keep."""
    socket_kwargs = broker_socket_kwargs(url)
    if socket_kwargs is not None:
        return redis.Redis(**socket_kwargs)
    return redis.Redis.from_url(url)


configure_from_env()
