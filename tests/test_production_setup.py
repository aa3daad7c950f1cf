"""Production shape: PostgreSQL and a shared Redis from the config; job workers get no DB credentials."""

from __future__ import annotations

import time
from pathlib import Path

from bot.host.bring_up import open_services, start_all_workers
from bot.host.config import Config
from bot.pipelines.lifecycle import Submission, submit
from bot.reporting.pipeline_views import pipeline_view
from tests.conftest import EXAMPLES


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_pipeline_on_postgresql_and_shared_redis(tmp_path: Path, postgres_url: str, redis_db_url: str,
                                                 hello_repo: Path) -> None:  # fmt: skip
    config = Config(data_dir=tmp_path / "data", database_url=postgres_url, broker_url=redis_db_url)
    services = open_services(config, None)
    assert not (tmp_path / "data" / "redis.sock").exists()  # no private broker when one is configured
    try:
        start_all_workers(services)
        patch = EXAMPLES / "hello" / "patches" / "pass.patch"
        pipeline_id = submit(services.runtime, Submission(
            tree_name="hello", tree_url=str(hello_repo), source="test", external_id="pg-1", base_ref="main",
            patches=(("pass.patch", patch.read_bytes()),)))  # fmt: skip
        deadline = time.monotonic() + 180
        while (view := pipeline_view(services.runtime, pipeline_id)).state != "done":
            assert time.monotonic() < deadline, view
            time.sleep(0.2)
        assert view.result == "pass", view.jobs
        by_queue = {child.name: child for child in services.supervisor.children}
        control_env = _environ(by_queue["worker control"].process.pid)  # type: ignore[union-attr]
        build_env = _environ(by_queue["worker build"].process.pid)  # type: ignore[union-attr]
        assert control_env["LABGATE_DATABASE_URL"] == postgres_url
        # Job workers: no database, no config, and a broker user of their own on the shared Redis.
        assert "LABGATE_DATABASE_URL" not in build_env and "LABGATE_CONFIG" not in build_env
        role_url = build_env["LABGATE_BROKER_URL"]
        assert role_url != redis_db_url and f"{services.instance}-build:" in role_url
        assert role_url.endswith(redis_db_url.removeprefix("redis://127.0.0.1:6379"))
    finally:
        services.stop()
        services.runtime.store.engine.dispose()
