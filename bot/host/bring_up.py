"""Bring up what a command needs: store, broker, and workers for the queues nobody serves."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bot.host.broker_acl import install_role_users, remove_role_users
from bot.host.config import Config
from bot.host.private_broker import start_private_redis
from bot.host.stores import Runtime, open_runtime
from bot.host.supervise import Supervisor, labgate_argv
from workers.app import BUILD_QUEUE, CHECKOUT_QUEUE, CONTROL_QUEUE, RESULTS_QUEUE, configure, lab_queue
from workers.errors import InfraError

log = logging.getLogger(__name__)


@dataclass
class Services:
    runtime: Runtime
    broker_url: str
    config_path: Path | None
    supervisor: Supervisor = field(default_factory=Supervisor)
    role_urls: dict[str, str] = field(default_factory=dict)  # broker URL per job-worker role

    @property
    def logs_dir(self) -> Path:
        return self.runtime.data_dir / "logs"

    def worker_env(self, queues: list[str]) -> dict[str, str]:
        """The control worker gets this runtime; a job worker only where its files are and its queue
        access: no config file, no database URL, no forge secret, not the data dir."""
        if CONTROL_QUEUE in queues or RESULTS_QUEUE in queues:
            return {**self.runtime.env(self.broker_url, self.config_path), "LABGATE_WORKER_ROLE": "control"}
        config = self.runtime.config
        role = worker_role(queues)
        return {
            "LABGATE_WORK_DIR": str(self.runtime.data_dir / "worker"),
            "LABGATE_ARTIFACTS_DIR": str(self.runtime.artifacts.root),
            "LABGATE_BROKER_URL": self.role_url(role),  # never the admin URL: fail closed
            "LABGATE_WORKER_ROLE": role,
            "LABGATE_LONGEST_JOB_S": str(max(config.caps.max_build_s, config.caps.max_job_s)),
            "LABGATE_BUILD_UIDS": config.sandbox.build_uids,
            "LABGATE_QEMU_UIDS": config.sandbox.qemu_uids,
            **self.board_env(role),
        }

    def board_env(self, role: str) -> dict[str, str]:
        """A lab worker serving board classes: their coordinators (swept for the worker's stale locks at
        start-up), and, from labgate's own environment, its staging ssh config and labgrid user name."""
        queues = role.split("+")
        coordinators = sorted({dc.labgrid.coordinator for dc in self.runtime.config.device_classes
                               if dc.labgrid is not None and lab_queue(dc.name) in queues})  # fmt: skip
        if not coordinators:
            return {}
        passed = ("LABGATE_LAB_SSH_CONFIG", "LABGATE_LAB_USER", "LABGATE_LAB_PLACE_WAIT_S")
        return {"LABGATE_LAB_COORDINATORS": " ".join(coordinators),
                **{name: os.environ[name] for name in passed if name in os.environ}}  # fmt: skip

    def start_worker(self, queues: list[str], concurrency: int = 1) -> None:
        name = "+".join(queues)
        self.supervisor.start(
            f"worker {name}",
            labgate_argv("worker", "--queues", ",".join(queues), "--concurrency", str(concurrency)),
            self.worker_env(queues),
            self.logs_dir / f"worker-{name}.log",
            inherit_env=CONTROL_QUEUE in queues or RESULTS_QUEUE in queues,
        )

    def role_url(self, role: str) -> str:
        """The broker URL of a job-worker role, its user made (with a fresh password) the first time
        this process starts a worker of it. Only then: another labgate process's workers of other
        roles keep working with theirs."""
        if role not in self.role_urls:
            self.role_urls.update(install_role_users(self.broker_url, [role], instance=self.instance))
        return self.role_urls[role]

    def stop(self) -> None:
        """Stop every child, then drop the job workers' broker users (on a shared Redis they would linger)."""
        self.supervisor.stop()
        if self.role_urls and self.runtime.config.broker_url:
            with contextlib.suppress(redis.RedisError, OSError):
                remove_role_users(self.broker_url, list(self.role_urls), instance=self.instance)

    @property
    def instance(self) -> str:
        return broker_instance(self.runtime.data_dir)


def broker_instance(data_dir: Path) -> str:
    """Names this labgate's broker users apart from another's on the same Redis: one per data dir."""
    return "labgate-" + hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]


def open_services(config: Config, config_path: Path | None) -> Services:
    runtime = open_runtime(config)
    supervisor = Supervisor()
    if config.broker_url:
        broker_url = config.broker_url
    else:
        broker_url, process = start_private_redis(runtime.data_dir)
        if process is not None:
            supervisor.adopt("redis-server", process, runtime.data_dir / "redis.log")
    configure(broker_url, longest_job_s=max(config.caps.max_build_s, config.caps.max_job_s))
    return Services(runtime, broker_url, config_path, supervisor)


def worker_groups(config: Config) -> list[list[str]]:
    """One worker process per group: control work never waits behind a build or a boot."""
    return [[CONTROL_QUEUE], [RESULTS_QUEUE], [CHECKOUT_QUEUE], [BUILD_QUEUE]] + [
        [lab_queue(dc.name)] for dc in config.device_classes
    ]


def worker_role(queues: list[str]) -> str:
    """A job worker's broker role is its queue (one queue per job worker group)."""
    return "+".join(queues)


def served_queues(timeout_s: float = 1.0) -> set[str]:
    from workers.app import app

    answer = app.control.inspect(timeout=timeout_s).active_queues() or {}
    return {queue["name"] for queues in answer.values() for queue in queues}


def start_missing_workers(services: Services) -> list[str]:
    """Start private workers for every queue group nobody serves; the groups started."""
    served = served_queues()
    started = []
    for group in worker_groups(services.runtime.config):
        if not set(group) <= served:
            services.start_worker(group)
            started.append("+".join(group))
    return started


def start_all_workers(services: Services, *, ready_within_s: float = 60) -> None:
    """One worker per queue group, and wait until every queue is served (InfraError if not)."""
    groups = worker_groups(services.runtime.config)
    for group in groups:
        services.start_worker(group)
    wanted = {queue for group in groups for queue in group}
    deadline = time.monotonic() + ready_within_s
    while not wanted <= served_queues(0.5):
        if time.monotonic() > deadline:
            raise InfraError(f"workers did not serve {sorted(wanted)} within {ready_within_s:.0f} s")
