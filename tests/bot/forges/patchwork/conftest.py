"""A FakePatchwork with project `netdev`, whose maintainer is `labgate-bot`; `stranger` is nobody there."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.host.config import load_config
from bot.host.stores import Runtime, open_runtime
from tests.fakes.patchwork_api import FakePatchwork
from workers.app import configure

PROJECT = "netdev"


@pytest.fixture
def pw() -> Iterator[FakePatchwork]:
    with FakePatchwork() as fake:
        fake.add_project(PROJECT)
        fake.add_user("labgate-bot")
        fake.add_user("stranger")
        fake.add_maintainer(PROJECT, "labgate-bot")
        yield fake


def open_patchwork_runtime(pw: FakePatchwork, tmp_path: Path, trees: dict[str, str], broker_url: str) -> Runtime:
    """labgate on `pw` with its data under tmp_path, polling the projects `trees` maps (project -> tree);
    each tree a URL nobody serves (no workers run here). The Celery app is pointed at `broker_url`: it is
    the process's, and an earlier test may have left it on a broker that is gone."""
    configure(broker_url, longest_job_s=60)
    (tmp_path / "token").write_text(pw.add_token("labgate-bot"))
    config = {
        "data_dir": str(tmp_path / "data"),
        "patchwork": {"url": pw.base_url, "token_file": str(tmp_path / "token"),
                      "projects": [{"project": project, "tree": tree} for project, tree in trees.items()]},
        "trees": [{"name": tree, "url": f"https://git.example.org/{tree}.git"} for tree in sorted(set(trees.values()))],
    }  # fmt: skip
    (tmp_path / "labgate.yaml").write_text(json.dumps(config))  # JSON is YAML
    return open_runtime(load_config(tmp_path / "labgate.yaml"))
