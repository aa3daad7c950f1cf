"""Results against a baseline: which failures are new, which were there before, which are fixed.

The decision rule, for one test of a change on one device class (`triage`):

- Only pass and fail runs are evidence; a skip or an incomplete run (a board fault) says nothing, so a test
  with no pass/fail run with the change is never `new`.
- A failure matching a known issue is `known-issue`; with a base whose build fails it is `pre-existing`; a
  failing test the change adds is `new`. A test that passes with the change is `pass`, or `fixed` when it
  failed at the base commit.
- A failing test whose base history on that class (the last `history` pass/fail results) is mixed is `flaky`;
  one that also fails at the base commit is `pre-existing`. These are decided at once, without re-runs.
- Any other failure is a candidate: it is run k more times with the change and k+1 times at the base commit
  (`runs_wanted`). It is `new` iff the base is stable (no failure at the base commit or in the history) and the
  one-sided Fisher exact test of change_fails/change_runs against 0/(base_runs + history) gives p <= alpha;
  "intermittent, m/k+1" when it failed only some runs. Otherwise it is `flaky` (the re-runs did not confirm
  it), or `unconfirmed` when a cap cut its re-runs short: never `new` on partial evidence.

The false-alarm rate: for a test no worse with the change (failure probability p on both sides, runs
independent), P(`new`) is computed exactly by `false_new_rate`, and its maximum over p by `false_new_bound`.
With k=3 and alpha=0.02 only 4/4 against 0/4 is `new` without history (p=1/70); with 20 history runs, 2/4
against 0/24 is (p=1/63). The bounds:

- history 0: false_new_bound = 1/256 = 0.0039 (at p=0.5: p^4 (1-p)^4);
- history 20: false_new_bound = 0.0024 (at p=0.074: p (1-p)^24 (1-(1-p)^3)),

both well under alpha: the gate (a failing first run and a clean base) costs more than the test itself.
The price is power against intermittent regressions: a change failing half its runs on a base that never
fails is called `new` with probability 1/16 without history and 7/16 with 20 runs of it (`new_rate`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

FAILING = ("fail", "incomplete")


@dataclass(frozen=True)
class Comparison:
    new: tuple[str, ...]  # failing now, not failing in the baseline (or absent from it)
    pre_existing: tuple[str, ...]  # failing in both
    fixed: tuple[str, ...]  # failing in the baseline, passing now


def compare_results(current: Mapping[str, str], baseline: Mapping[str, str]) -> Comparison:
    """Compare test statuses by path (`job/test.path`); order follows the current run."""
    new = tuple(p for p, s in current.items() if s in FAILING and baseline.get(p) not in FAILING)
    pre = tuple(p for p, s in current.items() if s in FAILING and baseline.get(p) in FAILING)
    fixed = tuple(p for p, s in baseline.items() if s in FAILING and current.get(p) == "pass")
    return Comparison(new, pre, fixed)


def render_comparison(comparison: Comparison, baseline_label: str) -> str:
    """Markdown, new failures first: what a maintainer must look at after a push."""
    from bot.core.render import inline_code  # here, not at the top: render.py imports this module's verdicts

    lines = []
    if comparison.new:
        lines += [f"**New failures since {baseline_label}:**", *[f"- {inline_code(p)}" for p in comparison.new], ""]
    else:
        lines += [f"No new failures since {baseline_label}.", ""]
    if comparison.pre_existing:
        lines += ["Failing before too:", *[f"- {inline_code(p)}" for p in comparison.pre_existing], ""]
    if comparison.fixed:
        lines += ["Fixed:", *[f"- {inline_code(p)}" for p in comparison.fixed], ""]
    return "\n".join(lines).strip()


# --- Verdicts for one test of a change: the decision rule, its evidence, and its false-alarm rate. ---

PASS, FAIL = "pass", "fail"
VERDICTS = ("new", "pre-existing", "fixed", "flaky", "known-issue", "unconfirmed", "pass")


@dataclass(frozen=True)
class TriageRule:
    reruns: int = 3  # k: re-runs of a candidate on the change; the base gets k+1 runs
    alpha: float = 0.02  # the one-sided Fisher test's level
    history: int = 20  # base-branch results read as the test's history


@dataclass(frozen=True)
class Evidence:
    path: str
    device_class: str
    change: tuple[str, ...]  # statuses with the change: first run, then re-runs (pass/fail/skip/incomplete)
    base: tuple[str, ...] = ()  # statuses at the base commit, same class/config: base runs and re-runs
    history: tuple[str, ...] = ()  # older base-branch statuses, same class and config, newest first
    known_issue: str | None = None  # id of a matching known issue (bot/core/known_issues.py)
    crash_title: str = ""
    cut_short: str = ""  # why re-runs stopped before the rule's k (a cap); "" if they did not
    absent_on_base: bool = False  # the change adds this test
    base_build_failed: bool = False  # the base's build fails: a failure is pre-existing


@dataclass(frozen=True)
class Triage:
    path: str
    device_class: str
    verdict: str
    evidence: str  # "failed 4/4 with the change, 0/4 on base"
    change_runs: int  # pass/fail runs with the change
    change_fails: int
    base_runs: int  # pass/fail runs at the base commit plus the history's
    base_fails: int
    p_value: float | None  # the Fisher test's, when it was computed
    known_issue: str | None
    crash_title: str
    cut_short: str


@dataclass(frozen=True)
class _Counts:
    """Only pass and fail are evidence: a skip or an incomplete run says nothing about the test."""

    change_runs: int
    change_fails: int
    base_runs: int  # at the base commit
    base_fails: int
    history_runs: int
    history_fails: int

    @classmethod
    def of(cls, ev: Evidence, rule: TriageRule) -> _Counts:
        history = [s for s in ev.history if s in (PASS, FAIL)][: max(rule.history, 0)]
        return cls(
            _runs(ev.change), ev.change.count(FAIL), _runs(ev.base), ev.base.count(FAIL),
            len(history), history.count(FAIL),
        )  # fmt: skip

    @property
    def history_mixed(self) -> bool:
        return 0 < self.history_fails < self.history_runs


def _runs(statuses: tuple[str, ...]) -> int:
    return sum(1 for s in statuses if s in (PASS, FAIL))


def runs_wanted(ev: Evidence, rule: TriageRule) -> tuple[int, int]:
    """(change, base) runs still needed before triage(ev) can decide; (0, 0) when it can decide now."""
    c = _Counts.of(ev, rule)
    if c.change_fails == 0 or ev.known_issue or ev.base_build_failed or ev.absent_on_base:
        return (0, 0)
    if c.history_mixed or c.base_fails:  # flaky or pre-existing whatever the re-runs say: never `new`
        return (0, 0)
    if c.history_fails:  # it failed on every earlier base run: one run at the base commit tells which
        return (0, 0) if c.base_runs else (0, 1)
    # Pass/fail runs: an incomplete re-run does not count and is asked for again. A cap (ev.cut_short) does
    # not change what is wanted: triage calls a candidate without them `unconfirmed`, whatever cut them.
    want = max(rule.reruns, 0) + 1
    return (max(want - c.change_runs, 0), max(want - c.base_runs, 0))


def triage(ev: Evidence, rule: TriageRule) -> Triage:
    """The verdict on one test of a change, with the evidence people read (see the module docstring)."""
    c = _Counts.of(ev, rule)
    base_all = c.base_runs + c.history_runs
    fails_all = c.base_fails + c.history_fails

    def verdict(name: str, evidence: str, p_value: float | None = None) -> Triage:
        return Triage(
            ev.path, ev.device_class, name, evidence, c.change_runs, c.change_fails, base_all, fails_all,
            p_value, ev.known_issue, ev.crash_title, ev.cut_short,
        )  # fmt: skip

    if c.change_runs == 0:
        others = [s for s in ev.change if s not in (PASS, FAIL)]
        if "incomplete" in others or not others:
            return verdict("unconfirmed", f"no pass/fail run with the change ({_tally(others)}): not a failure")
        return verdict("pass", f"no pass/fail run with the change ({_tally(others)})")
    if c.change_fails == 0:
        # Fixed only where the base failed every time: a test that fails now and then on the base (at its
        # commit or in its history) passing with the change is that test's luck, not the change's fix.
        if c.base_fails and c.base_fails == c.base_runs and not c.history_mixed:
            return verdict("fixed", f"passed {c.change_runs}/{c.change_runs} with the change, "
                                    f"failed {c.base_fails}/{c.base_runs} on base")  # fmt: skip
        if c.base_fails:
            return verdict("pass", f"passed {c.change_runs}/{c.change_runs} with the change; flaky on base "
                                   f"({c.base_fails} of {c.base_runs} failed)")  # fmt: skip
        return verdict("pass", f"passed {c.change_runs}/{c.change_runs} with the change")
    if ev.absent_on_base:  # before known issues: a change must not name its own new test into an entry's glob
        return verdict("new", f"the change adds this test: failed {c.change_fails}/{c.change_runs} with the change")
    if ev.known_issue:
        return verdict("known-issue", f"known issue {ev.known_issue}")
    if ev.base_build_failed:
        return verdict("pre-existing", "the base's build fails")
    if c.history_mixed:
        return verdict("flaky", f"base history mixed on {ev.device_class} "
                                f"({c.history_fails} of {c.history_runs} failed)")  # fmt: skip
    if c.base_fails:
        return verdict("pre-existing", f"fails on base too ({c.base_fails}/{c.base_runs})")
    counts = f"{c.change_fails}/{c.change_runs} with the change, {fails_all}/{base_all} on base"
    if c.history_fails and not c.base_runs:  # every earlier base run failed; none ran at the base commit
        return verdict("pre-existing", f"fails on base too ({c.history_fails}/{c.history_runs} in its history)")
    if c.history_fails:  # every earlier base run failed, the base commit's passed: the base changed under it
        return verdict("flaky", f"base history mixed on {ev.device_class} ({fails_all} of {base_all} failed)")
    if runs_wanted(ev, rule) != (0, 0):
        if ev.cut_short:
            return verdict("unconfirmed", f"re-runs cut short ({ev.cut_short}): failed {counts}")
        want = max(rule.reruns, 0) + 1
        return verdict("unconfirmed", f"evidence incomplete ({want} runs wanted on each side): failed {counts}")
    p = fisher_one_sided(c.change_fails, c.change_runs, fails_all, base_all)
    if p > rule.alpha:
        return verdict("flaky", f"not confirmed by re-runs: failed {counts} (p={p:.2g})", p)
    if c.change_fails < c.change_runs:
        return verdict("new", f"intermittent, {counts}", p)
    return verdict("new", f"failed {counts}", p)


def _tally(statuses: list[str]) -> str:
    if not statuses:
        return "no runs"
    kinds = sorted(set(statuses))
    return ", ".join(f"{statuses.count(k)} {k if k in ('skip', 'incomplete') else 'other'}" for k in kinds)


def fisher_one_sided(change_fails: int, change_runs: int, base_fails: int, base_runs: int) -> float:
    """P(at least change_fails of the failures fall on the change's runs) if every run fails alike:
    the hypergeometric tail, exact (the one-sided Fisher test of 'fails more with the change')."""
    for name, value in (("change_fails", change_fails), ("change_runs", change_runs),
                        ("base_fails", base_fails), ("base_runs", base_runs)):  # fmt: skip
        if value < 0:
            raise ValueError(f"fisher_one_sided: {name} is negative ({value})")
    if change_fails > change_runs or base_fails > base_runs:
        raise ValueError(f"fisher_one_sided: more failures than runs ({change_fails}/{change_runs}, "
                         f"{base_fails}/{base_runs})")  # fmt: skip
    runs, fails = change_runs + base_runs, change_fails + base_fails
    tail = sum(
        math.comb(fails, x) * math.comb(runs - fails, change_runs - x)
        for x in range(change_fails, min(fails, change_runs) + 1)
    )
    return min(tail / math.comb(runs, change_runs), 1.0)


def new_rate(rule: TriageRule, change_p: float, base_p: float, history_runs: int = 0) -> float:
    """P(`new`), exact, for a test failing with probability change_p with the change and base_p on the base:
    the whole procedure (history, first-run trigger, k re-runs, k+1 base runs), each run independent.
    history_runs: the base history's pass/fail results available; triage reads at most rule.history."""
    k, h = max(rule.reruns, 0), min(max(history_runs, 0), max(rule.history, 0))
    # `new` needs a clean history, a failing first run and k+1 passing base runs; then re-runs' failures j.
    gate = (1 - base_p) ** h * change_p * (1 - base_p) ** (k + 1)
    confirm = sum(math.comb(k, j) * change_p**j * (1 - change_p) ** (k - j) for j in _confirming(k, h, rule.alpha))
    return gate * confirm


@functools.lru_cache(maxsize=256)
def _confirming(k: int, history_runs: int, alpha: float) -> tuple[int, ...]:
    """The re-runs' failure counts j that make a failing first run `new` against a clean base."""
    return tuple(j for j in range(k + 1) if fisher_one_sided(1 + j, k + 1, 0, k + 1 + history_runs) <= alpha)


def false_new_rate(rule: TriageRule, p: float, history_runs: int = 0) -> float:
    """P(`new`) for a test no worse with the change (failure probability p on both sides), exact."""
    return new_rate(rule, p, p, history_runs)


def false_new_bound(rule: TriageRule, history_runs: int = 0) -> float:
    """The false-`new` rate's maximum over p: a 1,000-point grid, then a finer one around the best point."""
    grid = [i / 1000 for i in range(1001)]
    best = max(grid, key=lambda p: false_new_rate(rule, p, history_runs))
    fine = [min(max(best + i / 1_000_000, 0.0), 1.0) for i in range(-1000, 1001)]
    return max(false_new_rate(rule, p, history_runs) for p in [*grid, *fine])


def group_by_crash(triages: Sequence[Triage]) -> list[tuple[str, list[Triage]]]:
    """One problem per crash title, in first-seen order; a failure without a title stands alone."""
    groups: list[tuple[str, list[Triage]]] = []
    by_title: dict[str, list[Triage]] = {}
    for t in triages:
        if not t.crash_title:
            groups.append(("", [t]))
        elif t.crash_title in by_title:
            by_title[t.crash_title].append(t)
        else:
            by_title[t.crash_title] = [t]
            groups.append((t.crash_title, by_title[t.crash_title]))
    return groups
