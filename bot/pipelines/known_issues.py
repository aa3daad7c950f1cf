"""The known-issue registry: labgate.yaml's entries (read-only) and the store's (`labgate known-issue add`),
which of them explain a failure, which are stale, and what recent runs would say without one of them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from bot.core.known_issues import (
    FailureScope,
    KnownIssueEntry,
    SeenRun,
    compiled_log_regex,
    entry_problems,
    first_match,
    has_matcher,
    is_active,
    stale,
)
from bot.core.triage import Evidence, Triage, TriageRule, runs_wanted, triage
from bot.host.config import KnownIssueConfig
from bot.host.stores import Runtime
from bot.pipelines import history
from bot.store.models import Change, Job, KnownIssue, Pipeline, ResultHistory, Revision, TestVerdict
from workers.errors import UserError

RECENT_RUNS = 2000  # newest verdicts and history rows read for staleness


class KnownIssueInputError(UserError):
    """A bad entry or id: (field, why) pairs, each naming the entry's field (the CLI names its argument)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{field}: {why}" for field, why in problems))
        self.problems = problems


@dataclass(frozen=True)
class Listed:
    """One entry as `labgate known-issue list` shows it."""

    entry: KnownIssueEntry
    state: str  # "active", "expired on 2026-12-01", "expired early on 2026-11-20"
    stale: bool  # active, and explained none of the last n runs in its scope
    problem: str  # why it can never match ("" when it can): a config entry labgate.yaml let through


@dataclass(frozen=True)
class MatchedRun:
    """A test verdict a known issue was recorded on (or, without it, would be re-judged)."""

    pipeline_id: int
    job_id: int
    test_path: str
    device_class: str
    verdict: str
    evidence: str
    crash_title: str
    created_at: datetime


@dataclass(frozen=True)
class Without:
    """A verdict re-judged without its known issue: `wanted` re-runs means triage could not decide yet."""

    run: MatchedRun
    triage: Triage
    wanted: tuple[int, int]  # (change, base) runs it would have asked for


def today_utc() -> date:
    return datetime.now(UTC).date()


def entries_of(runtime: Runtime) -> list[KnownIssueEntry]:
    """Every entry: labgate.yaml's first (as written there), then the store's (oldest first)."""
    with runtime.store.session() as session:
        rows = session.scalars(select(KnownIssue).order_by(KnownIssue.id)).all()
        stored = [_from_row(row) for row in rows]
    return [*(_from_config(item) for item in runtime.config.known_issues), *stored]


def known_issue_for(source: Runtime | Iterable[KnownIssueEntry], *, where: FailureScope, test_path: str,
                    log: str | Sequence[str], crash_title: str, today: date | None = None) -> str | None:  # fmt: skip
    """The id of the first entry that explains this failure (config entries first), or None."""
    entries = entries_of(source) if isinstance(source, Runtime) else list(source)
    found = first_match(entries, where=where, test_path=test_path, log=log, crash_title=crash_title,
                        today=today or today_utc())  # fmt: skip
    return found.issue_id if found is not None else None


def add(runtime: Runtime, entry: KnownIssueEntry, *, created_by: str, today: date | None = None) -> KnownIssueEntry:
    """Write a new store entry; refuses a bad one, and an id the config or the store has (in any case)."""
    entry = replace(entry, source="store", expired_at=None)
    problems = entry_problems(entry, today=today or today_utc())
    if problems:
        raise KnownIssueInputError(problems)
    taken = {item.issue_id.casefold(): item for item in entries_of(runtime)}.get(entry.issue_id.casefold())
    if taken is not None:
        raise KnownIssueInputError([("issue_id", _taken(entry.issue_id, taken))])
    row = KnownIssue(issue_id=entry.issue_id, link=entry.link, owner=entry.owner, scope=dict(entry.scope),
                     test_glob=entry.test_glob, log_regex=entry.log_regex, crash_title=entry.crash_title,
                     expires_on=datetime.combine(entry.expires_on, datetime.min.time(), UTC),
                     created_by=created_by[:200])  # fmt: skip
    try:
        with runtime.store.session() as session:
            session.add(row)
    except IntegrityError:  # another `add` of the same id won the race
        raise KnownIssueInputError([("issue_id", f"{entry.issue_id!r} was just added by someone else")]) from None
    return entry


def _taken(issue_id: str, taken: KnownIssueEntry) -> str:
    same = "" if taken.issue_id == issue_id else f" as {taken.issue_id!r}"
    if taken.source == "config":
        return f"{issue_id!r} is in labgate.yaml{same} (config entries are read-only): pick another id"
    return f"{issue_id!r} is in the store{same}; ids are never reused: pick another id"


def expire(runtime: Runtime, issue_id: str, *, today: date | None = None) -> KnownIssueEntry:
    """End a store entry now; a config entry is edited in labgate.yaml, not here."""
    if any(item.id == issue_id for item in runtime.config.known_issues):
        raise KnownIssueInputError([("issue_id", f"{issue_id!r} is kept in config: edit labgate.yaml")])
    with runtime.store.session() as session:
        row = session.scalar(select(KnownIssue).where(KnownIssue.issue_id == issue_id))
        if row is None:
            raise KnownIssueInputError([("issue_id", f"no known issue {issue_id!r} in the store")])
        if row.expired_at is None:
            row.expired_at = datetime.combine(today or today_utc(), datetime.min.time(), UTC)
        return _from_row(row)


def listing(runtime: Runtime, *, n: int, today: date | None = None) -> list[Listed]:
    """Every entry with its state, whether it is stale (n runs in its scope, none explained) and why
    it could never match."""
    today = today or today_utc()
    entries = entries_of(runtime)
    with runtime.store.session() as session:
        runs = _recent_runs(session, runtime)
        rows = session.execute(select(KnownIssue.issue_id, KnownIssue.created_at))
        added = {issue_id: when for issue_id, when in rows}
    listed = []
    for entry in entries:
        since = added.get(entry.issue_id) if entry.source == "store" else None
        own = [run for when, run in runs if since is None or when >= _utc(since)]
        listed.append(Listed(entry, _state(entry, today), bool(stale([entry], own, n, today=today)),
                             _problem(entry)))  # fmt: skip
    return listed


def _state(entry: KnownIssueEntry, today: date) -> str:
    if entry.expired_at is not None:
        return f"expired early on {entry.expired_at}"
    return "active" if is_active(entry, today) else f"expired on {entry.expires_on}"


def _problem(entry: KnownIssueEntry) -> str:
    if not has_matcher(entry):
        return "no test glob, log regex nor crash title: it matches nothing"
    if entry.log_regex and compiled_log_regex(entry.log_regex) is None:
        return "its log regex is outside what labgate matches (see `known-issue add --log`): it matches nothing"
    return ""


def check(runtime: Runtime, *, limit: int) -> list[tuple[KnownIssueEntry, list[MatchedRun]]]:
    """Each entry with the newest `limit` verdicts it was recorded on."""
    entries = entries_of(runtime)
    with runtime.store.session() as session:
        return [(entry, [_view(row) for row in _matched(session, entry.issue_id, limit)]) for entry in entries]


def check_without(runtime: Runtime, issue_id: str, *, limit: int) -> list[Without]:
    """The newest `limit` verdicts put down to `issue_id`, re-judged on their stored counts as if it did
    not exist: those that come out `new` would have failed the check."""
    with runtime.store.session() as session:
        rows = _matched(session, issue_id, limit)
    if not rows and all(entry.issue_id != issue_id for entry in entries_of(runtime)):
        raise KnownIssueInputError([("issue_id", f"no known issue {issue_id!r} (in labgate.yaml or the store)")])
    settings = runtime.config.triage
    rule = TriageRule(reruns=settings.reruns, alpha=settings.alpha, history=settings.history)
    found = []
    for row in rows:
        evidence = Evidence(path=row.test_path, device_class=row.device_class,
                            change=_statuses(row.change_runs, row.change_fails),
                            base=_statuses(row.base_runs, row.base_fails), known_issue=None,
                            crash_title=row.crash_title, cut_short=row.cut_short)  # fmt: skip
        found.append(Without(_view(row), triage(evidence, rule), runs_wanted(evidence, rule)))
    return found


def _statuses(runs: int, fails: int) -> tuple[str, ...]:
    """Stored counts as statuses (their order is lost, and triage does not read it)."""
    fails = min(max(fails, 0), max(runs, 0))
    return ("fail",) * fails + ("pass",) * (max(runs, 0) - fails)


def _matched(session: Session, issue_id: str, limit: int) -> list[TestVerdict]:
    newest = (TestVerdict.created_at.desc(), TestVerdict.id.desc())
    return list(session.scalars(select(TestVerdict).where(TestVerdict.known_issue == issue_id)
                                .order_by(*newest).limit(limit)))  # fmt: skip


def _view(row: TestVerdict) -> MatchedRun:
    return MatchedRun(row.pipeline_id, row.job_id, row.test_path, row.device_class, row.verdict, row.evidence,
                      row.crash_title, _utc(row.created_at))  # fmt: skip


def _recent_runs(session: Session, runtime: Runtime) -> list[tuple[datetime, SeenRun]]:
    """The newest verdicts and base-branch results, newest first, each with where it ran."""
    arch = {dc.name: dc.tags.get("arch", "") for dc in runtime.config.device_classes}
    runs: list[tuple[datetime, SeenRun]] = []
    verdicts = list(session.scalars(select(TestVerdict).order_by(TestVerdict.created_at.desc()).limit(RECENT_RUNS)))
    places = _places(session, verdicts)
    for verdict in verdicts:
        tree, branch, config = places.get(verdict.job_id, ("", "", ""))
        where = FailureScope(tree, branch, arch.get(verdict.device_class, ""), verdict.device_class, config)
        judged = verdict.change_runs > 0 or bool(verdict.known_issue)  # no pass/fail run: no evidence
        runs.append((_utc(verdict.created_at), SeenRun(where, verdict.test_path, verdict.known_issue or "", judged)))
    base_rows = session.scalars(select(ResultHistory).order_by(ResultHistory.created_at.desc()).limit(RECENT_RUNS))
    for row in base_rows:
        where = FailureScope(row.tree, row.branch, arch.get(row.device_class, ""), row.device_class, row.config)
        # A base run was matched against no entry: only its pass says something (nothing to explain).
        runs.append((_utc(row.created_at), SeenRun(where, row.test_path, "", judged=row.status == "pass")))
    runs.sort(key=lambda pair: pair[0], reverse=True)
    return runs


def _places(session: Session, verdicts: list[TestVerdict]) -> dict[int, tuple[str, str, str]]:
    """Job id -> (tree, base branch, build config) of the verdicts' test jobs, as the history keys them;
    the rows are loaded a few queries in all (history's look-ups then find them in the session)."""
    jobs = session.scalars(select(Job).where(Job.id.in_({v.job_id for v in verdicts}))).all()
    pipelines = session.scalars(select(Pipeline).where(Pipeline.id.in_({j.pipeline_id for j in jobs}))
                                .options(selectinload(Pipeline.revision).selectinload(Revision.change)
                                         .selectinload(Change.tree))).all()  # fmt: skip
    session.scalars(select(Job).where(Job.id.in_({j.depends_on_id for j in jobs if j.depends_on_id}))).all()
    where = {pipeline.id: (pipeline.revision.change.tree.name, history.branch_of(pipeline)) for pipeline in pipelines}
    return {job.id: (*where[job.pipeline_id], history.identity(session, job)[1]) for job in jobs}


def _from_config(item: KnownIssueConfig) -> KnownIssueEntry:
    return KnownIssueEntry(issue_id=item.id, link=item.link, owner=item.owner, scope=dict(item.scope),
                           test_glob=item.test, log_regex=item.log, crash_title=item.crash, expires_on=item.expires,
                           source="config")  # fmt: skip


def _from_row(row: KnownIssue) -> KnownIssueEntry:
    scope = {str(k): str(v) for k, v in row.scope.items()} if isinstance(row.scope, dict) else {}
    return KnownIssueEntry(issue_id=row.issue_id, link=row.link, owner=row.owner, scope=scope,
                           test_glob=row.test_glob, log_regex=row.log_regex, crash_title=row.crash_title,
                           expires_on=_utc(row.expires_on).date(), source="store",
                           expired_at=_utc(row.expired_at).date() if row.expired_at is not None else None)  # fmt: skip


def _utc(when: datetime) -> datetime:
    """In UTC, as the store writes: SQLite hands back naive datetimes, PostgreSQL ones in its session's zone
    (a day written as UTC midnight would read as the day before west of Greenwich)."""
    return when.astimezone(UTC) if when.tzinfo is not None else when.replace(tzinfo=UTC)
