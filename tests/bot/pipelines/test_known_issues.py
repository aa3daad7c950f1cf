"""The known-issue registry on a real store (SQLite and PostgreSQL): config entries read-only beside the
store's, add/expire and what they refuse, matching through the registry, staleness from recorded runs,
and `check --without` re-judging recorded verdicts with bot/core/triage.py."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.core.known_issues import FailureScope, KnownIssueEntry
from bot.host.config import Config, DeviceClass, KnownIssueConfig
from bot.host.stores import Runtime, open_runtime
from bot.pipelines.known_issues import (
    KnownIssueInputError,
    add,
    check,
    check_without,
    entries_of,
    expire,
    known_issue_for,
    listing,
    today_utc,
)
from bot.store import models

TODAY = today_utc()
LATER = TODAY + timedelta(days=30)
WHERE = FailureScope(tree="net", branch="main", arch="x86_64", device_class="qemu-x86_64", config="x86_64")
CONFIG_ENTRY = KnownIssueConfig(id="CFG-1", link="https://bugs.example.org/1", owner="ops", test="unit/slow.*",
                                scope={"arch": "x86_64"}, expires=LATER)  # fmt: skip


@dataclass
class Registry:
    runtime: Runtime

    def entry(self, issue_id: str = "KI-1", **fields: object) -> KnownIssueEntry:
        fields.setdefault("expires_on", LATER)
        fields.setdefault("test_glob", "unit/math.*")
        return add(self.runtime, KnownIssueEntry(issue_id=issue_id, **fields), created_by="op")  # type: ignore[arg-type]

    def test_job(self, *, tree: str = "net", base_ref: str = "main", build: str = "x86_64") -> tuple[int, int]:
        """A change's pipeline with a build and a test job "unit" on qemu-x86_64: (pipeline id, job id)."""
        with self.runtime.store.session() as session:
            tree_row = session.scalar(select(models.Tree).where(models.Tree.name == tree))
            number = session.scalar(select(func.count()).select_from(models.Change)) or 0
            change = models.Change(tree=tree_row or models.Tree(name=tree, url="u"), source="github",
                                   external_id=str(number + 1))  # fmt: skip
            pipeline = models.Pipeline(revision=models.Revision(change=change, base_ref=base_ref), state="done")
            built = models.Job(pipeline=pipeline, kind="build", name=build, queue="build", state="done")
            session.add(built)
            session.flush()
            job = models.Job(pipeline=pipeline, kind="test", name="unit", queue="lab-qemu-x86_64", state="done",
                             depends_on_id=built.id, spec={"device_class": "qemu-x86_64"})  # fmt: skip
            session.add(job)
            session.flush()
            return pipeline.id, job.id

    def verdict(self, job: tuple[int, int], test: str, verdict: str, *, known: str | None = None,
                change: tuple[int, int] = (1, 1), base: tuple[int, int] = (0, 0), age_h: float = 1,
                evidence: str = "", crash: str = "") -> None:  # fmt: skip
        with self.runtime.store.session() as session:
            session.add(models.TestVerdict(
                pipeline_id=job[0], job_id=job[1], test_path=test, device_class="qemu-x86_64", verdict=verdict,
                evidence=evidence, change_runs=change[0], change_fails=change[1], base_runs=base[0],
                base_fails=base[1], known_issue=known, crash_title=crash,
                created_at=datetime.now(UTC) - timedelta(hours=age_h)))  # fmt: skip

    def history(self, test: str, status: str, *, age_h: float = 1) -> None:
        with self.runtime.store.session() as session:
            session.add(models.ResultHistory(tree="net", branch="main", commit="a" * 40, test_path=test,
                                             device_class="qemu-x86_64", config="x86_64", status=status,
                                             source="staging", created_at=datetime.now(UTC)
                                             - timedelta(hours=age_h)))  # fmt: skip

    def stored(self) -> int:
        with self.runtime.store.session() as session:
            return session.scalar(select(func.count()).select_from(models.KnownIssue)) or 0


@pytest.fixture
def registry(tmp_path: Path, database_url: str) -> Iterator[Registry]:
    qemu = DeviceClass(name="qemu-x86_64", tags={"arch": "x86_64", "platform": "qemu"})
    config = Config(data_dir=tmp_path / "data", known_issues=[CONFIG_ENTRY], device_classes=[qemu])
    runtime = open_runtime(config, database_url=database_url)
    yield Registry(runtime)
    runtime.store.engine.dispose()


def test_config_entries_come_first_and_store_entries_after_in_order(registry: Registry) -> None:
    registry.entry("KI-2", log_regex="oops", link="https://bugs.example.org/2", scope={"tree": "net"})
    registry.entry("KI-1")
    entries = entries_of(registry.runtime)
    assert [(e.issue_id, e.source) for e in entries] == [("CFG-1", "config"), ("KI-2", "store"), ("KI-1", "store")]
    stored = entries[1]
    assert stored.link == "https://bugs.example.org/2"
    assert (stored.log_regex, dict(stored.scope), stored.expires_on) == ("oops", {"tree": "net"}, LATER)


def test_config_entries_are_read_only(registry: Registry) -> None:
    with pytest.raises(KnownIssueInputError, match="'CFG-1' is kept in config: edit labgate.yaml"):
        expire(registry.runtime, "CFG-1")
    for same in ("CFG-1", "cfg-1"):
        with pytest.raises(KnownIssueInputError, match="is in labgate.yaml.*read-only"):
            registry.entry(same)
    assert registry.stored() == 0
    assert entries_of(registry.runtime)[0].expired_at is None


def test_an_id_is_never_added_twice_nor_reused_after_it_expired(registry: Registry) -> None:
    registry.entry("KI-1")
    expire(registry.runtime, "KI-1")
    for same in ("KI-1", "ki-1"):
        with pytest.raises(KnownIssueInputError, match="is in the store.*never reused") as raised:
            registry.entry(same)
        assert raised.value.problems[0][0] == "issue_id"
    assert registry.stored() == 1


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"issue_id": "../../etc/passwd"}, "issue_id"),
        ({"issue_id": "a/../b"}, "issue_id"),
        ({"log_regex": "(a+)+\\1"}, "log_regex"),
        ({"expires_on": TODAY - timedelta(days=1)}, "expires_on"),
        ({"scope": {"lab": "x"}}, "scope"),
        ({"test_glob": "*"}, "test_glob"),
    ],
)
def test_a_bad_entry_is_refused_naming_its_field_and_nothing_is_written(registry: Registry, fields: dict[str, object],
                                                                         field: str) -> None:  # fmt: skip
    with pytest.raises(KnownIssueInputError) as raised:
        registry.entry(**fields)  # type: ignore[arg-type]
    assert [name for name, _ in raised.value.problems] == [field]
    assert registry.stored() == 0


def test_an_entry_expiring_today_is_added_and_matches_today(registry: Registry) -> None:
    registry.entry("KI-1", expires_on=TODAY)
    assert known_issue_for(registry.runtime, where=WHERE, test_path="unit/math.mul", log="", crash_title="",
                           today=TODAY) == "KI-1"  # fmt: skip
    assert known_issue_for(registry.runtime, where=WHERE, test_path="unit/math.mul", log="", crash_title="",
                           today=TODAY + timedelta(days=1)) is None  # fmt: skip


def test_matching_through_the_registry_config_first_and_expire_ends_a_store_entry(registry: Registry) -> None:
    registry.entry("KI-1", test_glob="unit/*")
    ask = dict(where=WHERE, log="", crash_title="", today=TODAY)
    assert known_issue_for(registry.runtime, test_path="unit/slow.x", **ask) == "CFG-1"  # type: ignore[arg-type]
    assert known_issue_for(registry.runtime, test_path="unit/math.mul", **ask) == "KI-1"  # type: ignore[arg-type]
    arm = FailureScope(arch="arm64")
    assert known_issue_for(registry.runtime, test_path="unit/slow.x", **{**ask, "where": arm}) == "KI-1"  # type: ignore[arg-type]
    ended = expire(registry.runtime, "KI-1", today=TODAY)
    assert ended.expired_at == TODAY
    assert known_issue_for(registry.runtime, test_path="unit/math.mul", **ask) is None  # type: ignore[arg-type]
    entries = entries_of(registry.runtime)
    assert known_issue_for(entries, test_path="unit/slow.x", **ask) == "CFG-1"  # type: ignore[arg-type]
    with pytest.raises(KnownIssueInputError, match="no known issue 'KI-9'"):
        expire(registry.runtime, "KI-9")


def test_list_marks_entries_that_explained_none_of_the_last_n_runs_in_scope_stale(registry: Registry) -> None:
    for age in (30, 20, 10):  # CFG-1's tests failed three times, put down to another cause each time
        registry.verdict(registry.test_job(), "unit/slow.x", "flaky", age_h=age, change=(4, 1))
    registry.history("unit/slow.x", "pass", age_h=5)
    registry.history("unit/slow.x", "fail", age_h=4)  # a base failure no entry was matched against: no word
    registry.entry("KI-1")
    registry.entry("KI-2", test_glob="unit/slow.*")  # added now: the runs before it do not count against it
    registry.verdict(registry.test_job(), "unit/math.mul", "known-issue", known="KI-1", age_h=0)
    listed = {item.entry.issue_id: item for item in listing(registry.runtime, n=3)}
    assert listed["CFG-1"].stale and listed["CFG-1"].state == "active"
    assert not listed["KI-1"].stale
    assert not listed["KI-2"].stale
    assert not any(item.stale for item in listing(registry.runtime, n=5))  # CFG-1: 4 judged runs only


def test_staleness_counts_runs_by_tree_branch_and_build_config(registry: Registry) -> None:
    registry.entry("KI-NET", test_glob="unit/other.*", scope={"tree": "net", "branch": "main", "config": "x86_64"})
    registry.entry("KI-ARM", test_glob="unit/other.*", scope={"config": "arm64"})
    registry.entry("KI-NEXT", test_glob="unit/other.*", scope={"branch": "next"})
    for _ in range(2):
        registry.verdict(registry.test_job(), "unit/other.x", "flaky", age_h=0, change=(4, 1))
    registry.verdict(registry.test_job(build="base arm64"), "unit/other.x", "flaky", age_h=0, change=(4, 1))
    listed = {item.entry.issue_id: item.stale for item in listing(registry.runtime, n=2)}
    assert listed == {"CFG-1": False, "KI-NET": True, "KI-ARM": False, "KI-NEXT": False}
    assert {item.entry.issue_id: item.stale for item in listing(registry.runtime, n=1)}["KI-ARM"]  # "base arm64"


def test_list_says_why_a_config_entry_can_never_match(tmp_path: Path, database_url: str) -> None:
    bad = [KnownIssueConfig(id="CFG-RE", test="unit/*", log=r"(a)\1", expires=LATER),
           KnownIssueConfig(id="CFG-NONE", expires=LATER),
           KnownIssueConfig(id="CFG-OLD", test="unit/*", expires=TODAY - timedelta(days=1))]  # fmt: skip
    runtime = open_runtime(Config(data_dir=tmp_path / "d", known_issues=bad), database_url=database_url)
    try:
        listed = {item.entry.issue_id: item for item in listing(runtime, n=3)}
    finally:
        runtime.store.engine.dispose()
    assert "log regex is outside" in listed["CFG-RE"].problem
    assert "matches nothing" in listed["CFG-NONE"].problem
    assert listed["CFG-OLD"].state == f"expired on {TODAY - timedelta(days=1)}"


def test_check_lists_each_entrys_recent_verdicts_newest_first(registry: Registry) -> None:
    registry.entry("KI-1")
    job = registry.test_job()
    registry.verdict(job, "unit/math.mul", "known-issue", known="KI-1", age_h=5)
    registry.verdict(job, "unit/math.div", "known-issue", known="KI-1", age_h=1)
    registry.verdict(job, "unit/math.add", "new", age_h=1)
    found = {entry.issue_id: runs for entry, runs in check(registry.runtime, limit=10)}
    assert [run.test_path for run in found["KI-1"]] == ["unit/math.div", "unit/math.mul"]
    assert found["CFG-1"] == []
    assert [run.test_path for run in check(registry.runtime, limit=1)[1][1]] == ["unit/math.div"]


def test_check_without_re_judges_its_verdicts_as_if_it_did_not_exist(registry: Registry) -> None:
    registry.entry("KI-1")
    job = registry.test_job()
    registry.verdict(job, "unit/math.mul", "known-issue", known="KI-1", change=(4, 4), base=(4, 0),
                     evidence="known issue KI-1")  # fmt: skip
    registry.verdict(job, "unit/math.div", "known-issue", known="KI-1", change=(4, 4), base=(4, 2))
    registry.verdict(job, "unit/math.sub", "known-issue", known="KI-1", change=(1, 1), base=(0, 0))
    registry.verdict(job, "unit/math.add", "known-issue", known="CFG-1", change=(4, 4), base=(4, 0))
    found = {item.run.test_path: item for item in check_without(registry.runtime, "KI-1", limit=10)}
    assert set(found) == {"unit/math.mul", "unit/math.div", "unit/math.sub"}
    assert found["unit/math.mul"].triage.verdict == "new"
    assert found["unit/math.mul"].triage.evidence == "failed 4/4 with the change, 0/4 on base"
    assert found["unit/math.mul"].run.pipeline_id == job[0]
    assert found["unit/math.div"].triage.verdict == "pre-existing"
    assert found["unit/math.sub"].triage.verdict == "unconfirmed"
    assert found["unit/math.sub"].wanted == (3, 4)  # a candidate: re-runs would have decided
    with pytest.raises(KnownIssueInputError, match="no known issue 'KI-404'"):
        check_without(registry.runtime, "KI-404", limit=10)
    assert check_without(registry.runtime, "CFG-1", limit=10)[0].triage.verdict == "new"


def test_a_verdict_whose_entry_was_removed_from_config_can_still_be_previewed(registry: Registry) -> None:
    job = registry.test_job()
    registry.verdict(job, "unit/x", "known-issue", known="GONE-1", change=(4, 4), base=(4, 0))
    assert [item.triage.verdict for item in check_without(registry.runtime, "GONE-1", limit=5)] == ["new"]


def test_store_dates_round_trip_as_days(registry: Registry) -> None:
    registry.entry("KI-1", expires_on=date(2099, 12, 31))
    expire(registry.runtime, "KI-1", today=date(2099, 1, 1))
    assert (entries_of(registry.runtime)[1].expires_on, entries_of(registry.runtime)[1].expired_at) == (
        date(2099, 12, 31), date(2099, 1, 1))  # fmt: skip


def test_store_days_read_the_same_in_a_session_west_of_greenwich(tmp_path: Path, postgres_url: str) -> None:
    from bot.store.db import migrate

    migrate(postgres_url)
    west = open_runtime(Config(data_dir=tmp_path / "d"), create=False,
                        database_url=postgres_url + "?options=-c%20timezone%3DAmerica%2FNew_York")  # fmt: skip
    try:
        add(west, KnownIssueEntry(issue_id="KI-1", test_glob="u/*", expires_on=LATER),
            created_by="op")  # fmt: skip
        with west.store.session() as session:
            stored = session.scalar(select(models.KnownIssue.expires_on))
        assert stored is not None and stored.utcoffset() != timedelta(0)  # the session's zone, not UTC
        assert entries_of(west)[0].expires_on == LATER
    finally:
        west.store.engine.dispose()
