"""Artifact retention: the periodic prune of the artifact store (config `artifacts:`, rule in bot/core/retention.py).

Only blobs that expired rows name are ever deleted, never a blob the store holds for a reason this module
does not know (a Patchwork mbox, a blob a worker is uploading for a result not yet recorded), and only once
it has been idle for the grace period: a worker that finds its blob stored refreshes its mtime
(workers/artifacts.py), so a blob an expired job and a job running now share is not taken from the latter.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.core.retention import JobFacts, PipelineFacts, Policy, PrunePlan, RevisionFacts, digests_in, plan_prune
from bot.host.stores import Runtime
from bot.store.models import Change, Delivery, Job, JobAttempt, Pipeline, Revision, Tree, utcnow
from bot.store.once import ONCE_SOURCE

PRUNED_KEY = "artifacts_pruned_at"  # in a job's outputs: when its blobs went (ISO 8601, UTC)
MARK_BATCH = 500  # ids per IN (...): under SQLite's bound-parameter limit


@dataclass(frozen=True)
class PruneReport:
    dry_run: bool
    kept_pipelines: int
    expired_jobs: int
    newly_marked: int  # jobs whose pages now say their artifacts were pruned
    doomed: int  # blobs only expired rows name
    deleted: int
    freed_bytes: int
    held_by_grace: int  # doomed but touched within the grace period (a worker wants it again)
    leftovers: int  # temporary files of dead writes removed
    seconds: float

    def lines(self) -> list[str]:
        verb = "would delete" if self.dry_run else "deleted"
        return [f"{self.kept_pipelines} pipelines keep their artifacts; {self.expired_jobs} jobs expired "
                f"({self.newly_marked} newly); {self.doomed} blobs named only by expired rows: {verb} "
                f"{self.deleted} ({self.freed_bytes} bytes), {self.held_by_grace} kept as recently used; "
                f"{self.leftovers} leftover temporary files removed; {self.seconds:.2f} s"]  # fmt: skip


def prune_artifacts(runtime: Runtime, *, dry_run: bool = False, now: datetime | None = None) -> PruneReport:
    """Mark the expired jobs, then delete the blobs only they (and expired revisions) name and that have
    been idle for the grace period. Marking first: a crash in between leaves blobs for the next run,
    never a page whose links lead nowhere without saying why. `dry_run` changes nothing."""
    started = time.monotonic()
    settings = runtime.config.artifacts
    now = now or utcnow()
    policy = Policy(keep_days=settings.keep_days, keep_last_per_tree=settings.keep_last_per_tree)
    with runtime.store.session() as session:
        plan = plan_prune(_pipelines(session), _jobs(session), _revisions(session), policy, now,
                          held_elsewhere=_held_elsewhere(session))  # fmt: skip
        marked = 0 if dry_run else _mark_pruned(session, plan, now)
    idle_before = now.timestamp() - settings.grace_s
    deleted = freed = held = 0
    store = runtime.artifacts
    for digest in sorted(plan.doomed):
        path = store.path_of(digest)
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue  # gone already, or never a blob (a digest of something else)
        if stat.st_mtime >= idle_before:
            held += 1
            continue
        if dry_run:
            deleted, freed = deleted + 1, freed + stat.st_size
            continue
        gone = store.delete_if_idle(digest, idle_before=idle_before)
        if gone is None:
            held += 1
        else:
            deleted, freed = deleted + 1, freed + gone
    leftovers = 0 if dry_run else store.sweep_leftovers(idle_before=idle_before)
    return PruneReport(dry_run=dry_run, kept_pipelines=len(plan.kept_pipelines), expired_jobs=len(plan.expired_jobs),
                       newly_marked=marked, doomed=len(plan.doomed), deleted=deleted, freed_bytes=freed,
                       held_by_grace=held, leftovers=leftovers, seconds=time.monotonic() - started)  # fmt: skip


def prune_due(runtime: Runtime) -> list[str]:
    """The timer's body (bot/tasks.py): a prune, unless the config turned retention off."""
    if not runtime.config.artifacts.prune:
        return ["artifact retention is off (artifacts.prune: false)"]
    return prune_artifacts(runtime).lines()


def claim_blobs(runtime: Runtime, outputs: dict[str, Any], log_digest: str | None) -> bool:
    """Whether a finished job's artifacts and log can be taken up by a new row (a base build shared with
    a later pipeline): none was pruned, and each is touched now, so that a prune running meanwhile keeps
    it (ArtifactStore.delete_if_idle puts back a blob touched before it looked). False: run it again."""
    if PRUNED_KEY in outputs:
        return False
    artifacts = outputs.get("artifacts")
    refs = artifacts.values() if isinstance(artifacts, dict) else ()
    wanted = {*digests_in([ref.get("digest") for ref in refs if isinstance(ref, dict)]), *digests_in(log_digest)}
    return all([runtime.artifacts.touch(digest) for digest in sorted(wanted)])  # each touched, even after a miss


def pruned_on(outputs: dict[str, object]) -> str | None:
    """When the job's artifacts were pruned (the date, for its page), or None while they are kept."""
    value = outputs.get(PRUNED_KEY)
    return value[:10] if isinstance(value, str) else None


def _pipelines(session: Session) -> list[PipelineFacts]:
    rows = session.execute(
        select(Pipeline.id, Tree.name, Pipeline.state, Pipeline.created_at, Pipeline.finished_at)
        .join(Revision, Pipeline.revision_id == Revision.id).join(Change).join(Tree)
    ).all()  # fmt: skip
    return [PipelineFacts(id=pid, tree=tree, done=state == "done", created_at=_aware(created),
                          finished_at=_aware(finished) if finished else None)
            for pid, tree, state, created, finished in rows]  # fmt: skip


def _jobs(session: Session) -> list[JobFacts]:
    attempt_logs: dict[int, set[str]] = defaultdict(set)
    for job_id, digest in session.execute(select(JobAttempt.job_id, JobAttempt.log_digest)):
        attempt_logs[job_id].update(digests_in(digest))
    rows = session.execute(select(Job.id, Job.pipeline_id, Job.log_digest, Job.outputs, Job.spec,
                                  Job.depends_on_id, Job.reused_from_id))  # fmt: skip
    return [JobFacts(id=job_id, pipeline_id=pipeline_id,
                     digests=frozenset({*digests_in(log), *digests_in(outputs), *digests_in(spec),
                                        *attempt_logs.get(job_id, ())}),
                     uses=tuple(j for j in (depends_on, reused_from) if j is not None))
            for job_id, pipeline_id, log, outputs, spec, depends_on, reused_from in rows]  # fmt: skip


def _revisions(session: Session) -> list[RevisionFacts]:
    pipelines: dict[int, list[int]] = defaultdict(list)
    for pipeline_id, revision_id in session.execute(select(Pipeline.id, Pipeline.revision_id)):
        pipelines[revision_id].append(pipeline_id)
    return [RevisionFacts(pipeline_ids=tuple(pipelines.get(rid, ())), digests=frozenset(digests_in(patches)))
            for rid, patches in session.execute(select(Revision.id, Revision.patches))]  # fmt: skip


def _held_elsewhere(session: Session) -> set[str]:
    """Blobs the once-table's records name (bot/store/once.py: a Patchwork series' record and its mbox
    digest). Records are JSON objects; the rest of that table is plain text and names no blob."""
    details = session.scalars(select(Delivery.detail).where(Delivery.source == ONCE_SOURCE,
                                                            Delivery.detail.startswith("{")))  # fmt: skip
    held: set[str] = set()
    for detail in details:
        try:
            held.update(digests_in(json.loads(detail)))
        except ValueError:
            continue  # not JSON after all: names nothing we could find
    return held


def _mark_pruned(session: Session, plan: PrunePlan, now: datetime) -> int:
    """Say on each expired job that held blobs that they are gone (once: the first prune's date stays)."""
    marked = 0
    expired = sorted(plan.expired_jobs)
    for start in range(0, len(expired), MARK_BATCH):
        for job in session.scalars(select(Job).where(Job.id.in_(expired[start : start + MARK_BATCH]))):
            holds = job.log_digest or job.outputs.get("artifacts")
            if holds and PRUNED_KEY not in job.outputs:
                job.outputs = {**job.outputs, PRUNED_KEY: now.isoformat()}
                marked += 1
    return marked


def _aware(moment: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they were written in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
