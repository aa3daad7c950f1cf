"""Triage's verdicts on a change's test job: the evidence of each failing test read from what the control
plane recorded (the job's and its re-runs' statuses, the history at the base commit and before it, the base
build's result, a known issue), bot/core/triage.py's verdict on it, perf comparisons of tests that report
metrics (bot/core/perf.py), written as TestVerdict rows. The runs themselves: bot/pipelines/triage_runs.py."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.core.known_issues import FailureScope
from bot.core.perf import MetricComparison, compare_metric, parse_metrics
from bot.core.progress import BASE_BUILD_PREFIX, is_base_build
from bot.core.triage import Evidence, Triage, TriageRule, triage
from bot.host.stores import Runtime
from bot.pipelines import history, known_issues
from bot.store.models import Job, Pipeline, TestResult, TestVerdict

MARK = "triage"  # Job.spec of a triage run: {"of": change test job id, "side": "change"|"base", "n": 1..}
STATE = "triage_state"  # Job.spec of the change's test job: "running", then "done"
CUT_SHORT = "triage_cut_short"  # Job.spec of the change's test job: why its runs stopped early
CHANGE, BASE = "change", "base"
MAX_CRASH_TITLE = 300


def runs_of(pipeline: Pipeline, job: Job) -> list[Job]:
    return [run for run in pipeline.jobs if (mark := history.triage_of(run)) is not None and mark["of"] == job.id]


def mark_of(run: Job) -> dict[str, Any]:
    return history.triage_of(run) or {}


@dataclass
class Context:
    """What one change test job's triage reads: its identity, its failing and metric tests, and the rule."""

    runtime: Runtime
    job: Job
    tree: str
    base_sha: str | None
    job_name: str
    config: str
    device_class: str
    rule: TriageRule
    arch: str = ""
    failing: list[str] = field(default_factory=list)
    metric_paths: list[str] = field(default_factory=list)
    known_entries: list[Any] | None = None  # read once per context, when a failure needs them

    @classmethod
    def of(cls, runtime: Runtime, session: Session, job: Job) -> Context:
        settings = runtime.config.triage
        name, config = history.identity(session, job)
        statuses = history.statuses_of(job, name)
        context = cls(runtime, job, job.pipeline.revision.change.tree.name, job.pipeline.revision.base_sha, name,
                      config, str(job.spec.get("device_class") or ""),
                      TriageRule(reruns=settings.reruns, alpha=settings.alpha, history=settings.history))  # fmt: skip
        build = session.get(Job, job.depends_on_id) if job.depends_on_id is not None else None
        kernel = build.spec.get("kernel") if build is not None else None
        context.arch = str(kernel.get("arch") or "") if isinstance(kernel, dict) else ""
        context.failing = [path for path, status in statuses.items() if status == "fail"]
        context.metric_paths = [f"{name}/{test.path}" for test in job.tests
                                if test.status == "pass" and history.metrics_of(test.diagnostics)]  # fmt: skip
        return context


def existing_base_build(session: Session, job: Job) -> Job | None:
    """The pipeline's build of the job's recipe at the base commit, if it has one: its own build when that
    is at the base, the base build its build waits for, or one drafted for triage before."""
    pipeline = job.pipeline
    build = session.get(Job, job.depends_on_id) if job.depends_on_id is not None else None
    if build is None or pipeline.revision.base_sha is None:
        return None
    if build.spec.get("head_sha") == pipeline.revision.base_sha:
        return build
    parent = session.get(Job, build.depends_on_id) if build.depends_on_id is not None else None
    if parent is not None and is_base_build(parent.kind, parent.spec):
        return parent
    name = BASE_BUILD_PREFIX + build.name
    return next((other for other in pipeline.jobs if other.kind == "build" and other.name == name), None)


def evidence(session: Session, context: Context, path: str, runs: list[Job]) -> Evidence:
    """One test's evidence, from what the control plane recorded: the job's and its re-runs' statuses,
    the history at the base commit and before it, the base build's result."""
    job = context.job
    change = [history.statuses_of(job, context.job_name).get(path, "incomplete")]
    for run in sorted(runs, key=lambda r: int(mark_of(r).get("n") or 0)):
        if mark_of(run).get("side") == CHANGE and run.state == "done":
            change.append(history.statuses_of(run, context.job_name).get(path, _missing(run)))
    base_rows: list[str] = []
    older: list[str] = []
    absent = False
    if context.base_sha is not None:
        at = (context.tree, context.base_sha)
        base_rows = [row.status for row in history.base_result_at(session, *at, path, context.device_class,
                                                                    context.config)]  # fmt: skip
        booted = [row.status for row in history.base_result_at(session, *at, history.boot_path(context.job_name),
                                                                 context.device_class, context.config)]  # fmt: skip
        absent = not base_rows and "pass" in booted and path != history.boot_path(context.job_name)
        older = [row.status for row in history.history_for(
            session, context.tree, history.branch_of(job.pipeline), path, context.device_class, context.config,
            context.rule.history, exclude_commit=context.base_sha)]  # fmt: skip
    return Evidence(path=path, device_class=context.device_class, change=tuple(change), base=tuple(base_rows),
                    history=tuple(older), known_issue=_known_issue(context, path), crash_title=_crash_title(job),
                    cut_short=str(job.spec.get(CUT_SHORT) or ""), absent_on_base=absent,
                    base_build_failed=_base_build_failed(session, job, runs))  # fmt: skip


def _missing(run: Job) -> str:
    """A test a re-run has no result for: it did not run (a crash before it is the run's `<job>/boot`)."""
    return "skip" if run.result == "skip" else "incomplete"


def _base_build_failed(session: Session, job: Job, runs: list[Job]) -> bool:
    """The base's build of the recipe failed (its own, or the one a base run was sent to boot)."""
    builds = [existing_base_build(session, job)]
    builds += [session.get(Job, run.depends_on_id) for run in runs
               if mark_of(run).get("side") == BASE and run.depends_on_id is not None]  # fmt: skip
    return any(build is not None and build.state == "done" and build.result == "fail" and build.error_code is None
               for build in builds)  # fmt: skip


def _crash_title(job: Job) -> str:
    """The crash title lab/console.py found in the job's console (the worker's word, shown, never judged)."""
    crash = job.outputs.get("crash") if isinstance(job.outputs, dict) else None
    title = crash.get("title") if isinstance(crash, dict) else None
    return title[:MAX_CRASH_TITLE] if isinstance(title, str) else ""


def _known_issue(context: Context, path: str) -> str | None:
    """The known issue (bot/pipelines/known_issues.py) that explains the failure, if one does: matched on
    the test's path, its diagnostics and the crash title, in the failure's scope."""
    if context.known_entries is None:
        context.known_entries = known_issues.entries_of(context.runtime)
    if not context.known_entries:
        return None
    test = path.removeprefix(f"{context.job_name}/")
    log = "\n".join(case.diagnostics or "" for case in context.job.tests if case.path == test)
    where = FailureScope(tree=context.tree, branch=history.branch_of(context.job.pipeline), arch=context.arch,
                         device_class=context.device_class, config=context.config)  # fmt: skip
    return known_issues.known_issue_for(context.known_entries, where=where, test_path=path, log=log,
                                        crash_title=_crash_title(context.job))  # fmt: skip


def conclude(runtime: Runtime, session: Session, job: Job) -> list[TestVerdict]:
    """The job's verdicts, written once its runs have ended (or none were needed); its state "done"."""
    context = Context.of(runtime, session, job)
    runs = runs_of(job.pipeline, job)
    found: dict[str, Triage] = {}
    for path in context.failing:
        found[path] = triage(evidence(session, context, path, runs), context.rule)
    for path in _maybe_fixed(session, context):
        found.setdefault(path, triage(evidence(session, context, path, runs), context.rule))
    rows = {path: _verdict_row(job, result) for path, result in found.items()}
    for path in context.metric_paths:
        perf = _perf_row(session, context, path, runs)
        if perf is not None and (path not in rows or perf.verdict == "regression"):
            rows[path] = perf
    for row in rows.values():
        session.add(row)
    job.spec = {**job.spec, STATE: "done"}
    session.flush()
    return list(rows.values())


def _maybe_fixed(session: Session, context: Context) -> list[str]:
    """Tests passing with the change that failed at the base commit: only where base runs exist."""
    if context.base_sha is None:
        return []
    passing = [path for path, status in history.statuses_of(context.job, context.job_name).items() if status == "pass"]
    return [path for path in passing
            if "fail" in history.statuses(history.base_result_at(session, context.tree, context.base_sha, path,
                                                                 context.device_class, context.config))]  # fmt: skip


def _verdict_row(job: Job, result: Triage) -> TestVerdict:
    return TestVerdict(pipeline_id=job.pipeline_id, job_id=job.id, test_path=result.path[:500],
                       device_class=result.device_class, verdict=result.verdict, evidence=result.evidence,
                       change_runs=result.change_runs, change_fails=result.change_fails, base_runs=result.base_runs,
                       base_fails=result.base_fails, p_value=result.p_value, known_issue=result.known_issue,
                       crash_title=result.crash_title, cut_short=result.cut_short)  # fmt: skip


def _perf_row(session: Session, context: Context, path: str, runs: list[Job]) -> TestVerdict | None:
    """A metric test's comparison with the base commit, metric by metric (bot/core/perf.py). Which way is
    better, and the unit, are what the base's own runs declare: a change cannot flip them."""
    if context.base_sha is None:
        return None
    test = path.removeprefix(f"{context.job_name}/")
    change: dict[str, list[float]] = {}
    passed = 0  # runs with the change in which the test passed: each must measure what the base measures
    for run in [context.job, *(r for r in runs if mark_of(r).get("side") == CHANGE and r.state == "done")]:
        for case in run.tests:
            if case.path == test and case.status == "pass":
                passed += 1
                for metric in parse_metrics(case.diagnostics or ""):
                    if math.isfinite(metric.value):
                        change.setdefault(metric.name, []).append(metric.value)
    rows = history.base_result_at(session, context.tree, context.base_sha, path, context.device_class,
                                  context.config)  # fmt: skip
    declared = _declared(session, rows, test)
    settings = context.runtime.config.triage
    compared: list[MetricComparison] = []
    for name, (unit, better) in sorted(declared.items()):
        base = [float(row.metrics[name]) for row in rows if row.status == "pass" and _number(row.metrics.get(name))]
        missing = passed - len(change.get(name, []))
        if base and missing > 0:
            # The base measures it and some run with the change did not (or printed no number): a change must
            # not dodge its comparison by leaving the line out.
            text = f"{name}: reported on base ({len(base)} runs), not in {missing} of {passed} runs with the change"
            compared.append(MetricComparison(name, unit, better, tuple(change.get(name, [])), tuple(base), None,
                                             0.0, True, text))  # fmt: skip
            continue
        try:
            compared.append(compare_metric(name, unit, better, change.get(name, []), base, alpha=settings.alpha,
                                           min_effect=settings.min_effect))  # fmt: skip
        except ValueError:
            continue  # not a finite number: nothing to compare
    if not compared:
        return None
    worse = [comparison for comparison in compared if comparison.regression]
    first = (worse or compared)[0]
    return TestVerdict(pipeline_id=context.job.pipeline_id, job_id=context.job.id, test_path=path[:500],
                       device_class=context.device_class, verdict="regression" if worse else "pass",
                       evidence="; ".join(comparison.text for comparison in (worse or compared))[:4000],
                       change_runs=len(first.change), change_fails=0, base_runs=len(first.base), base_fails=0,
                       p_value=min(comparison.p_value for comparison in (worse or compared)), known_issue=None,
                       crash_title="", cut_short=str(context.job.spec.get(CUT_SHORT) or ""))  # fmt: skip


def _declared(session: Session, rows: list[Any], test: str) -> dict[str, tuple[str, str]]:
    """name -> (unit, better) as the base's first passing run that reports metrics prints them."""
    for row in rows:
        if row.status != "pass" or not row.metrics or row.job_id is None:
            continue
        case = session.scalars(select(TestResult).where(TestResult.job_id == row.job_id, TestResult.path == test)
                               .limit(1)).first()  # fmt: skip
        if case is not None:
            return {metric.name: (metric.unit, metric.better) for metric in parse_metrics(case.diagnostics or "")}
    return {}


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
