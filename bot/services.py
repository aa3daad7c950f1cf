"""Bring up what a command needs: store, broker, and workers for the queues nobody serves."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from bot.broker import start_private_redis
from bot.config import Config
from bot.runtime import Runtime, open_runtime
from bot.supervise import Supervisor, labgate_argv
from workers.app import BUILD_QUEUE, CHECKOUT_QUEUE, CONTROL_QUEUE, configure, lab_queue
from workers.errors import InfraError

log = logging.getLogger(__name__)


@dataclass
class Services:
    runtime: Runtime
    broker_url: str
    config_path: Path | None
    supervisor: Supervisor = field(default_factory=Supervisor)

    @property
    def logs_dir(self) -> Path:
        return self.runtime.data_dir / "logs"

    def worker_env(self, queues: list[str]) -> dict[str, str]:
        env = self.runtime.env(self.broker_url, self.config_path)
        if CONTROL_QUEUE not in queues:
            # Job workers run untrusted builds: they get no database credentials.
            env["LABGATE_DATABASE_URL"] = ""
        return env

    def start_worker(self, queues: list[str], concurrency: int = 1) -> None:
        name = "+".join(queues)
        self.supervisor.start(
            f"worker {name}",
            labgate_argv("worker", "--queues", ",".join(queues), "--concurrency", str(concurrency)),
            self.worker_env(queues),
            self.logs_dir / f"worker-{name}.log",
        )


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
    return [[CONTROL_QUEUE], [CHECKOUT_QUEUE], [BUILD_QUEUE]] + [
        [lab_queue(dc.name)] for dc in config.device_classes
    ]


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
