"""Shared fixtures: real PostgreSQL and Redis on this machine, fresh per test session."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
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
        "markers",
        "needs(name, reason): the host must have `name` (tests/requirements.py HOST); "
        "skipped without it, failed under CI=true",
    )


# Tests that assert on host-wide state (every process of the sandbox uids, cgroups, slot uids) or take
# the whole machine (a kernel build): scripts/test.sh runs them alone, after the others ran in parallel.
# test_build_escape.py counts every process of the build slots' uids; test_sandbox.py kills every process
# of build uid 64107 (a parallel pipeline may hold that slot); test_cgroups.py and test_slots.py were
# always here (their cgroup name and uids 64190-64199 are their own; they take seconds, so left alone).
# (test_worker_processes.py, which watched every QEMU on the host, now watches only its lab's: it runs in parallel.)
EXCLUSIVE_PATHS = ("tests/security/test_build_escape.py", "tests/workers/test_sandbox.py",
                   "tests/workers/test_slots.py", "tests/workers/test_cgroups.py")  # fmt: skip

# Slow tests are exclusive too (a new one is alone until shown safe), except these, which run in the
# parallel part: each builds no kernel, runs its own labgate (data directory, private broker, workers) or
# none, takes slots through the host's slot locks as every pipeline test does, and looks only at processes
# it can tell are its own (its job or image directory on their command line, its own process tree).
#   test_actions_end_to_end.py: its own `labgate up` and OIDC issuers; asserts on the jobs' output only.
#   test_maintainers.py: perl's get_maintainer.pl on a tree of empty files; no process of labgate at all.
#   test_install.py: pip into its own venv, then `labgate try` with its own data directory.
#   test_separate_hosts.py: its own web, workers and directories; asserts on their files and results.
#   test_board_health.py, test_place_health_e2e.py, test_standin_board.py, test_lab_worker_recovery.py:
#     their own stand-in lab (coordinator, PDU, boards); QEMUs found by their image marker, their job
#     directory or as descendants of their own PDU or worker.
#   test_injected_boots.py: each boot's QEMU is found by its tmp_path (processes_mentioning).
#   tests/bench/test_campaign.py: its own Redis database and SQLite store; the job workers are played.
#   test_triage_e2e.py, test_reproduce_slow.py, test_bisection_e2e.py: a labgate of their own (as
#     test_pipeline_e2e.py's and test_poller.py's, which run here too); they assert on their store and mail.
#   test_modules.py's real boots and test_arm64_example.py: a test worker or `labgate try` of their own, in
#     their tmp_path; they assert on the job's result and log only (no kernel build: Debian's kernels).
# Kernel builds stay exclusive (make -j takes both cores): test_linux_slow.py,
# test_static_linux_slow.py (it may make a tree from the tarball) and test_console.py's live LKDTM test.
SHARED_SLOW_PATHS = ("tests/actions/test_actions_end_to_end.py",
                     "tests/bot/core/test_maintainers.py::test_the_same_addresses_as_get_maintainer",
                     "tests/test_install.py", "tests/test_separate_hosts.py",
                     "tests/lab/test_board_health.py", "tests/lab/test_place_health_e2e.py",
                     "tests/lab/test_standin_board.py", "tests/lab/test_lab_worker_recovery.py",
                     "tests/workers/test_injected_boots.py", "tests/lab/test_modules.py",
                     "tests/lab/test_arm64_example.py", "tests/bench/test_campaign.py", "tests/test_triage_e2e.py",
                     "tests/test_reproduce_slow.py", "tests/bot/pipelines/test_bisection_e2e.py")  # fmt: skip


def _is_exclusive(item: pytest.Item) -> bool:
    path = Path(str(item.fspath)).resolve().relative_to(REPO_ROOT).as_posix()
    node = path + item.nodeid[len(item.nodeid.split("::", 1)[0]) :]  # the node id from the repository's root
    if path.startswith(EXCLUSIVE_PATHS):
        return True
    return item.get_closest_marker("slow") is not None and not node.startswith(SHARED_SLOW_PATHS)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the exclusive tests; slow tests first, so that they never start last and leave a worker idle."""
    for item in items:
        if _is_exclusive(item):
            item.add_marker(pytest.mark.exclusive)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_runtest_setup(item: pytest.Item) -> None:
    # At run time, not at import: a host without the tool still collects every test.
    for mark in item.iter_markers("needs"):
        need(*mark.args)


@contextmanager
def _new_postgres_database(template: str | None = None) -> Iterator[str]:
    """A new PostgreSQL database (a copy of `template` when given); its URL, dropped afterwards."""
    name = f"labgate_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    except Exception as exc:  # pragma: no cover - environment problem, said plainly
        pytest.fail(f"PostgreSQL at {POSTGRES_ADMIN_URL} is not usable: {exc}")
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards."""
    with _new_postgres_database() as url:
        yield url


# Every test of a runtime used to run all the migrations on its new database (1-2 s each under load,
# hundreds of tests). Migrated once per test process, a database is copied instead; open_runtime's
# migrate() then finds it at head. Tests of the migrations themselves use postgres_url or a path.
@pytest.fixture(scope="session")
def _migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bot.store.db import migrate

    path = tmp_path_factory.mktemp("migrated") / "labgate.sqlite3"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def _migrated_postgres() -> Iterator[str]:
    """The name of a migrated database no one connects to (CREATE DATABASE ... TEMPLATE needs that)."""
    from bot.store.db import migrate

    with _new_postgres_database() as url:
        migrate(url)  # its engine is disposed: no connection is left open
        yield url.rsplit("/", 1)[1]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each store labgate supports, migrated: SQLite in the test's directory, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        path = tmp_path / "labgate.sqlite3"
        source = sqlite3.connect(request.getfixturevalue("_migrated_sqlite"))
        with closing(source), closing(sqlite3.connect(path)) as copy:
            source.backup(copy)  # a consistent copy, whatever journal the source keeps
        yield f"sqlite:///{path}"
        return
    with _new_postgres_database(template=request.getfixturevalue("_migrated_postgres")) as url:
        yield url


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
