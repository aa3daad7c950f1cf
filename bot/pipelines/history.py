"""Result history on base branches: every test of a staging pipeline's test jobs and of a base run, kept
per (tree, branch, test path, device class, config), and the queries triage reads it through.

A test job is also recorded as the pseudo-test `<job>/boot`: `pass` when it ran any test, else the job's
own result (a kernel that never reached its runner fails `<job>/boot`, a board fault leaves it
`incomplete`). So a failure with no test result still has a baseline to be judged against."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.core.perf import parse_metrics
from bot.core.progress import BASE_BUILD_PREFIX
from bot.store.models import Job, Pipeline, ResultHistory

BOOT = "boot"  # the pseudo-test of a test job that tells whether it ran its tests at all
STATUSES = ("pass", "fail", "skip", "incomplete")
SHA = re.compile(r"^[0-9a-f]{7,64}$")
MAX_METRICS = 50  # metrics kept per test row: a test printing thousands of `# metric:` lines is cut here
MAX_LIMIT = 500


def boot_path(job_name: str) -> str:
    return f"{job_name}/{BOOT}"


def triage_of(job: Job) -> dict[str, Any] | None:
    """The control-written triage mark of a re-run or base run (Job.spec["triage"]), None for others."""
    mark = job.spec.get("triage") if isinstance(job.spec, dict) else None
    return mark if isinstance(mark, dict) and isinstance(mark.get("of"), int) else None


def test_job_name(job: Job) -> str:
    """A test job's name in the history, verdicts, known issues and bisections: the plan's name for the test
    ("unit"), as people write it in a known issue's glob; the device class is a column of its own."""
    name = job.spec.get("name")
    return name if isinstance(name, str) and name else job.name


def identity(session: Session, job: Job) -> tuple[str, str]:
    """(job name, config) a test job's results are kept under: a triage run's are its change job's, and the
    config is the plan's build name (a base build "base x86_64" is config "x86_64")."""
    mark = triage_of(job)
    own = session.get(Job, mark["of"]) if mark is not None else None
    named = own if own is not None else job
    build = session.get(Job, named.depends_on_id) if named.depends_on_id is not None else None
    config = str((build.spec.get("name") if build is not None else None) or (build.name if build else ""))
    return test_job_name(named), config.removeprefix(BASE_BUILD_PREFIX)


def branch_of(pipeline: Pipeline) -> str:
    """The base branch: a staging push's own branch (its change is "<repo>@<branch>"); the revision's base ref
    when it names a branch (forge changes); for a base given as a commit (a Patchwork series' base-commit:),
    the first of the branches the checkout made sure it is on."""
    change = pipeline.revision.change
    if pipeline.kind == "post-merge" and "@" in change.external_id:
        return change.external_id.rsplit("@", 1)[1]
    base_ref = pipeline.revision.base_ref
    if SHA.match(base_ref):
        checkout = next((job for job in pipeline.jobs if job.kind == "checkout"), None)
        branches = checkout.spec.get("base_branches") if checkout is not None else None
        if isinstance(branches, list) and branches and isinstance(branches[0], str):
            return branches[0]
    return base_ref


def statuses_of(job: Job, job_name: str) -> dict[str, str]:
    """"<job>/<path>" -> status for each test of the job, and its `<job>/boot` (see the module's note).
    A job with no result of the four (our error) has none."""
    if job.result not in STATUSES:
        return {}
    found = {f"{job_name}/{test.path}": test.status for test in job.tests if test.status in STATUSES}
    found.setdefault(boot_path(job_name), "pass" if job.tests else job.result)
    return found


def metrics_of(diagnostics: str) -> dict[str, float]:
    """{name: value} from a test's `# metric:` lines (bot/core/perf.py), capped."""
    found: dict[str, float] = {}
    for metric in parse_metrics(diagnostics or ""):
        if len(found) >= MAX_METRICS:
            break
        if math.isfinite(metric.value):  # JSON (PostgreSQL's) holds no NaN nor infinity
            found.setdefault(str(metric.name)[:200], float(metric.value))
    return found


def record_job(session: Session, job: Job, *, source: str) -> int:
    """Write the job's rows (one per test, and its `<job>/boot`); how many. The commit is the one its build
    built (a staging head, a base commit), read from the control-written build spec."""
    pipeline = job.pipeline
    build = session.get(Job, job.depends_on_id) if job.depends_on_id is not None else None
    commit = str(build.spec.get("head_sha") or "") if build is not None else ""
    if not SHA.match(commit):
        return 0
    job_name, config = identity(session, job)
    device_class = str(job.spec.get("device_class") or "")
    diagnostics = {f"{job_name}/{test.path}": test.diagnostics for test in job.tests}
    statuses = statuses_of(job, job_name)
    for path, status in statuses.items():
        session.add(ResultHistory(
            tree=pipeline.revision.change.tree.name, branch=branch_of(pipeline), commit=commit, test_path=path[:500],
            device_class=device_class, config=config, status=status, source=source, job_id=job.id,
            metrics=metrics_of(diagnostics.get(path, "")),
        ))  # fmt: skip
    return len(statuses)


def after_test_result(session: Session, job: Job) -> int:
    """A test job ended for good: a staging pipeline's job, or a base run that ran (not one that took
    another's result), goes into the history; how many rows."""
    if job.kind != "test" or job.state != "done" or job.reused_from_id is not None:
        return 0
    mark = triage_of(job)
    if mark is not None:
        if mark.get("side") != "base":
            return 0  # a re-run with the change is not a base-branch result
        return record_job(session, job, source="base-run" if mark.get("n") == 1 else "rerun")
    if job.pipeline.kind == "post-merge":
        return record_job(session, job, source="staging")
    return 0


def history_for(session: Session, tree: str, branch: str, test_path: str, device_class: str, config: str,
                limit: int, *, exclude_commit: str | None = None) -> list[ResultHistory]:  # fmt: skip
    """The test's newest `limit` rows on the branch, class and config, newest first."""
    query = select(ResultHistory).where(
        ResultHistory.tree == tree, ResultHistory.branch == branch, ResultHistory.test_path == test_path,
        ResultHistory.device_class == device_class, ResultHistory.config == config)  # fmt: skip
    if exclude_commit is not None:
        query = query.where(ResultHistory.commit != exclude_commit)
    query = query.order_by(ResultHistory.created_at.desc(), ResultHistory.id.desc())
    return list(session.scalars(query.limit(max(0, min(limit, MAX_LIMIT)))))


def base_result_at(session: Session, tree: str, commit: str, test_path: str, device_class: str,
                   config: str) -> list[ResultHistory]:  # fmt: skip
    """Every recorded run of the test at this commit on the class and config (any branch), oldest first."""
    return list(session.scalars(
        select(ResultHistory).where(
            ResultHistory.tree == tree, ResultHistory.commit == commit, ResultHistory.test_path == test_path,
            ResultHistory.device_class == device_class, ResultHistory.config == config)
        .order_by(ResultHistory.id)
    ))  # fmt: skip


def runs_at(session: Session, tree: str, commit: str, job_name: str, device_class: str, config: str) -> int:
    """How many runs of a test job are recorded at a commit (each wrote one `<job>/boot`)."""
    return session.scalar(
        select(func.count()).select_from(ResultHistory).where(
            ResultHistory.tree == tree, ResultHistory.commit == commit, ResultHistory.test_path == boot_path(job_name),
            ResultHistory.device_class == device_class, ResultHistory.config == config)
    ) or 0  # fmt: skip


def statuses(rows: Sequence[ResultHistory]) -> tuple[str, ...]:
    return tuple(row.status for row in rows)
