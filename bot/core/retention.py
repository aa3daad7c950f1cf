"""The artifact retention rule: which pipelines keep their blobs, and which blobs nothing kept still names."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bot.core.signed_urls import is_digest


@dataclass(frozen=True)
class Policy:
    keep_days: int  # a pipeline finished this recently keeps its blobs
    keep_last_per_tree: int  # so do the newest N pipelines of each tree, whatever their age


@dataclass(frozen=True)
class PipelineFacts:
    id: int
    tree: str
    done: bool  # a pipeline still running keeps everything (its patches, what its jobs made so far)
    created_at: datetime
    finished_at: datetime | None = None


@dataclass(frozen=True)
class JobFacts:
    id: int
    pipeline_id: int
    digests: frozenset[str]  # every blob the job's row names: log, attempts' logs, outputs, spec
    # Jobs of other pipelines whose blobs this one uses (a shared build it depends on, a result it reused).
    uses: tuple[int, ...] = ()


@dataclass(frozen=True)
class RevisionFacts:
    pipeline_ids: tuple[int, ...]  # none yet: waiting for approval, its patches are kept
    digests: frozenset[str]  # its patches


@dataclass(frozen=True)
class PrunePlan:
    kept_pipelines: frozenset[int]
    expired_jobs: frozenset[int]  # their pages say their artifacts were pruned
    doomed: frozenset[str]  # named by expired rows only: delete (once idle past the grace period)
    kept: frozenset[str] = field(default=frozenset())  # named by something kept


def kept_pipelines(pipelines: Iterable[PipelineFacts], policy: Policy, now: datetime) -> frozenset[int]:
    """Pipelines that keep their blobs: running ones, those finished within keep_days, and the newest
    keep_last_per_tree of each tree (by creation), whatever their age."""
    cutoff = now - timedelta(days=policy.keep_days)
    kept: set[int] = set()
    by_tree: dict[str, list[PipelineFacts]] = defaultdict(list)
    for pipeline in pipelines:
        by_tree[pipeline.tree].append(pipeline)
        if not pipeline.done or (pipeline.finished_at or pipeline.created_at) >= cutoff:
            kept.add(pipeline.id)
    for members in by_tree.values():
        newest = sorted(members, key=lambda p: (p.created_at, p.id), reverse=True)[: policy.keep_last_per_tree]
        kept.update(p.id for p in newest)
    return frozenset(kept)


def plan_prune(pipelines: Iterable[PipelineFacts], jobs: Iterable[JobFacts], revisions: Iterable[RevisionFacts],
               policy: Policy, now: datetime, held_elsewhere: Iterable[str] = ()) -> PrunePlan:  # fmt: skip
    """What a prune deletes: blobs named by expired jobs and revisions and by nothing kept. A blob shared
    by a kept job and an expired one stays; so do the blobs of any job a kept job uses, transitively, and
    `held_elsewhere` (blobs other records name: a Patchwork series' mbox, which a patch may equal)."""
    kept_ids = kept_pipelines(pipelines, policy, now)
    jobs_by_id = {job.id: job for job in jobs}
    kept_jobs: set[int] = set()
    todo = [job.id for job in jobs_by_id.values() if job.pipeline_id in kept_ids]
    while todo:
        job_id = todo.pop()
        if job_id in kept_jobs or job_id not in jobs_by_id:
            continue
        kept_jobs.add(job_id)
        todo.extend(jobs_by_id[job_id].uses)
    kept: set[str] = set(held_elsewhere)
    expired: set[str] = set()
    for job in jobs_by_id.values():
        (kept if job.id in kept_jobs else expired).update(job.digests)
    for revision in revisions:
        alive = not revision.pipeline_ids or any(p in kept_ids for p in revision.pipeline_ids)
        (kept if alive else expired).update(revision.digests)
    return PrunePlan(
        kept_pipelines=kept_ids,
        expired_jobs=frozenset(set(jobs_by_id) - kept_jobs),
        doomed=frozenset(expired - kept),
        kept=frozenset(kept),
    )


def digests_in(value: Any) -> Iterator[str]:
    """Every sha256 digest a JSON value holds, at any depth: what a row names in the artifact store.
    Reading all of them, not only known keys, errs on keeping: a blob named anywhere is in use."""
    if isinstance(value, str):
        if is_digest(value):
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from digests_in(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from digests_in(item)
