"""Shared fixtures: real PostgreSQL and Redis on this machine, fresh per test session."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text

from tests.requirements import need

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples"
POSTGRES_ADMIN_URL = os.environ.get("LABGATE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("LABGATE_TEST_REDIS", "redis://127.0.0.1:6379")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs(name, reason): the host must have `name` (tests/requirements.py HOST); "
        "skipped without it, failed under CI=true",
    )


# Tests that assert on host-wide state (every process of the sandbox uids, cgroups, slot uids) or take
# the whole machine (a kernel build): scripts/test.sh runs them alone, after the others ran in parallel.
# test_worker_processes.py watches every QEMU on the host: a root QEMU another test runs at the same time
# (a baseline boot, a labgrid QEMUDriver) would be taken for the lab's.
EXCLUSIVE_PATHS = ("tests/security/test_build_escape.py", "tests/workers/test_sandbox.py",
                   "tests/workers/test_slots.py", "tests/workers/test_cgroups.py",
                   "tests/security/test_worker_processes.py")  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the exclusive tests; slow tests first, so that they never start last and leave a worker idle."""
    for item in items:
        path = Path(str(item.fspath)).resolve().relative_to(REPO_ROOT).as_posix()
        if path.startswith(EXCLUSIVE_PATHS) or item.get_closest_marker("slow") is not None:
            item.add_marker(pytest.mark.exclusive)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_runtest_setup(item: pytest.Item) -> None:
    # At run time, not at import: a host without the tool still collects every test.
    for mark in item.iter_markers("needs"):
        need(*mark.args)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards."""
    name = f"labgate_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - environment problem, said plainly
        pytest.fail(f"PostgreSQL at {POSTGRES_ADMIN_URL} is not usable: {exc}")
    yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store labgate supports: SQLite in the test's directory, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'labgate.sqlite3'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def redis_db_url() -> Iterator[str]:
    """A Redis database number of its own on the shared server, emptied before and after."""
    # One database per test process: xdist's workers are gw0, gw1, ... (their pids may collide mod 14).
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    number = 1 + ((int(worker[2:]) if worker.startswith("gw") else os.getpid()) % 14)
    url = f"{REDIS_URL}/{number}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


def make_git_repo(source: Path, dest: Path) -> Path:
    """Copy a plain directory into a new git repository with one commit."""
    subprocess.run(["cp", "-a", f"{source}/.", str(dest)], check=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "Example Dev", "GIT_AUTHOR_EMAIL": "dev@example.org",
           "GIT_COMMITTER_NAME": "Example Dev", "GIT_COMMITTER_EMAIL": "dev@example.org",
           "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z"}  # fmt: skip
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "import"]):
        subprocess.run(argv, cwd=dest, check=True, env=env)
    return dest


@pytest.fixture
def hello_repo(tmp_path: Path) -> Path:
    """examples/hello as a git repository, as the demo makes it."""
    return make_git_repo(EXAMPLES / "hello", tmp_path / "hello")
