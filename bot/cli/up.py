"""`labgate up` and `labgate web`: the whole service on one machine, supervised."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import FrameType

from bot.host.bring_up import open_services, worker_groups
from bot.host.config import Config
from bot.host.stores import open_runtime
from bot.host.supervise import labgate_argv
from bot.host.timers import periodic_tasks
from workers.app import CONTROL_QUEUE, app, configure

SUPERVISE_INTERVAL_S = 1.0


def run_web(config: Config, config_path: Path | None) -> int:
    """The web app alone. Started by `labgate up` it gets the broker in its environment;
    started by hand it finds (or starts, and later stops) the broker like any command.
    uvicorn runs under the edge's limits (bot/web/server.py: deadlines, caps, counted refusals)."""
    from bot.web.app import create_app
    from bot.web.server import run_server

    broker_url = os.environ.get("LABGATE_BROKER_URL")
    if broker_url:
        runtime = open_runtime(config)
        configure(broker_url, longest_job_s=max(config.caps.max_build_s, config.caps.max_job_s))
        run_server(create_app(runtime), config.web)
        return 0
    services = open_services(config, config_path)
    try:
        run_server(create_app(services.runtime), config.web)
    finally:
        services.stop()
    return 0


def run_up(config: Config, config_path: Path | None) -> int:
    services = open_services(config, config_path)
    for group in worker_groups(config):
        services.start_worker(group)
    services.supervisor.start(
        "web", labgate_argv("web"), services.runtime.env(services.broker_url, config_path),
        services.logs_dir / "web.log",
    )  # fmt: skip
    print(f"labgate up: web on http://{config.web.host}:{config.web.port}, data in "
          f"{services.runtime.data_dir}, logs in {services.logs_dir}", flush=True)  # fmt: skip
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    timers = periodic_tasks(config)
    due = {name: time.monotonic() for name, _ in timers}  # at start too: what happened while labgate was down
    try:
        while not stopping:
            for name in services.supervisor.restart_dead():
                print(f"labgate up: restarted {name}", flush=True)
            for name, every in timers:
                if time.monotonic() >= due[name]:
                    due[name] = time.monotonic() + every
                    _enqueue(name)
            time.sleep(SUPERVISE_INTERVAL_S)
    finally:
        services.stop()
    return 0


def _enqueue(task: str) -> None:
    try:
        app.send_task(task, queue=CONTROL_QUEUE)
    except Exception as exc:  # the broker restarting: the next turn tries again
        print(f"labgate up: could not queue {task}: {exc}", flush=True)
