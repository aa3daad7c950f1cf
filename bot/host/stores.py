"""What one labgate process runs with: config, store, artifact store; passed on to children by env."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from bot.host.config import Config, load_config
from bot.store.db import Store, database_url_for, migrate
from workers.artifacts import ArtifactStore


@dataclass
class Runtime:
    config: Config
    data_dir: Path
    store: Store
    artifacts: ArtifactStore

    def env(self, broker_url: str, config_path: Path | None) -> dict[str, str]:
        """Environment that gives a child process (worker, web) this same runtime."""
        return {
            "LABGATE_CONFIG": str(config_path.resolve()) if config_path else "",
            "LABGATE_DATA_DIR": str(self.data_dir),
            "LABGATE_DATABASE_URL": self.store.url,
            "LABGATE_BROKER_URL": broker_url,
            "LABGATE_LONGEST_JOB_S": str(max(self.config.caps.max_build_s, self.config.caps.max_job_s)),
        }


def open_runtime(config: Config, *, database_url: str | None = None, create: bool = True) -> Runtime:
    data_dir = config.resolved_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    url = database_url or database_url_for(config.database_url, data_dir)
    if create:
        migrate(url)
    return Runtime(config, data_dir, Store(url), ArtifactStore(data_dir / "artifacts"))


@cache
def runtime_from_env() -> Runtime:
    """The runtime of a child process started by `labgate` (one per process)."""
    path = os.environ.get("LABGATE_CONFIG") or None
    config = load_config(Path(path) if path else None)
    if os.environ.get("LABGATE_DATA_DIR"):
        config = config.model_copy(update={"data_dir": Path(os.environ["LABGATE_DATA_DIR"])})
    return open_runtime(config, database_url=os.environ.get("LABGATE_DATABASE_URL"), create=False)
