"""core.triage: the verdict on each test of a change with the evidence people read, the decision rule's
exact false-alarm figures, crash grouping, and what a push's comparison says in markdown a name cannot leave."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import pytest

from bot.core.triage import (
    Comparison,
    Evidence,
    Triage,
    TriageRule,
    false_new_bound,
    false_new_rate,
    fisher_one_sided,
    group_by_crash,
    new_rate,
    render_comparison,
    runs_wanted,
    triage,
)


def test_a_test_name_cannot_break_out_of_its_code_span() -> None:
    hostile = "a` ![t](https://attacker.example/x) `b"
    text = render_comparison(Comparison(new=(hostile,), pre_existing=(), fixed=()), "`abc`")
    line = next(line for line in text.splitlines() if "attacker" in line)
    assert line.startswith("- ``") and line.endswith("``"), line


# --- The verdicts on one test of a change, and the sentences people read. ---

RULE = TriageRule()  # k=3, alpha=0.02, history=20
QEMU = "qemu-x86_64"


def ev(change: str, base: str = "", history: str = "", **kw: Any) -> Evidence:
    """Statuses spelled one letter a run: p pass, f fail, s skip, i incomplete."""
    word = {"p": "pass", "f": "fail", "s": "skip", "i": "incomplete"}
    return Evidence("kselftest/net.ping", QEMU, tuple(word[c] for c in change), tuple(word[c] for c in base),
                    tuple(word[c] for c in history), **kw)  # fmt: skip


def test_a_failure_confirmed_on_every_run_against_a_passing_base_is_new() -> None:
    t = triage(ev("ffff", "pppp"), RULE)
    assert (t.verdict, t.evidence) == ("new", "failed 4/4 with the change, 0/4 on base")
    assert (t.change_runs, t.change_fails, t.base_runs, t.base_fails) == (4, 4, 4, 0)
    assert t.p_value == pytest.approx(1 / 70)


def test_an_intermittent_failure_on_a_stable_base_is_new_not_flaky() -> None:
    t = triage(ev("ffpp", "pppp", "p" * 20), RULE)
    assert (t.verdict, t.evidence) == ("new", "intermittent, 2/4 with the change, 0/24 on base")
    assert t.p_value == pytest.approx(1 / 63)


def test_a_failure_the_re_runs_do_not_confirm_is_flaky_with_its_counts() -> None:
    t = triage(ev("fppp", "pppp", "p" * 20), RULE)
    assert t.verdict == "flaky"
    assert "1/4 with the change, 0/24 on base" in t.evidence and "not confirmed" in t.evidence
    assert triage(ev("fffp", "pppp"), RULE).verdict == "flaky"  # 3/4 against 0/4: p=1/14


def test_a_failure_on_the_base_too_is_pre_existing() -> None:
    t = triage(ev("f", "fffp"), RULE)
    assert (t.verdict, t.evidence) == ("pre-existing", "fails on base too (3/4)")
    assert runs_wanted(ev("f", "f"), RULE) == (0, 0)


def test_a_base_whose_build_fails_makes_a_failure_pre_existing() -> None:
    e = ev("f", base_build_failed=True)
    assert triage(e, RULE).verdict == "pre-existing" and runs_wanted(e, RULE) == (0, 0)


def test_a_test_passing_with_the_change_that_failed_at_the_base_is_fixed() -> None:
    t = triage(ev("p", "f"), RULE)
    assert (t.verdict, t.evidence) == ("fixed", "passed 1/1 with the change, failed 1/1 on base")
    assert runs_wanted(ev("p", "f"), RULE) == (0, 0)


def test_a_flaky_test_passing_with_the_change_is_no_fix() -> None:
    assert triage(ev("p", "fpfp"), RULE).verdict == "pass"  # the base commit itself is mixed
    assert triage(ev("p", "f", "pfpp"), RULE).verdict == "pass"  # its history is
    assert "flaky on base (2 of 4 failed)" in triage(ev("p", "fpfp"), RULE).evidence
    assert triage(ev("p", "ff", "fff"), RULE).verdict == "fixed"


def test_a_pass_is_a_pass_and_wants_no_runs() -> None:
    t = triage(ev("p", history="pfpf"), RULE)
    assert (t.verdict, t.evidence) == ("pass", "passed 1/1 with the change")
    assert runs_wanted(ev("p"), RULE) == (0, 0)


def test_a_mixed_base_history_makes_a_failure_flaky_at_once() -> None:
    e = ev("f", history="p" * 17 + "fff")
    t = triage(e, RULE)
    assert (t.verdict, t.evidence) == ("flaky", "base history mixed on qemu-x86_64 (3 of 20 failed)")
    assert runs_wanted(e, RULE) == (0, 0)


def test_a_known_issue_is_decided_at_once_and_named() -> None:
    e = ev("f", known_issue="KI-1")
    t = triage(e, RULE)
    assert (t.verdict, t.evidence, t.known_issue) == ("known-issue", "known issue KI-1", "KI-1")
    assert runs_wanted(e, RULE) == (0, 0)


def test_re_runs_cut_short_by_a_cap_are_unconfirmed_never_new() -> None:
    t = triage(ev("ff", "p", cut_short="max_extra_runs 24"), RULE)
    assert (t.verdict, t.evidence) == ("unconfirmed", "re-runs cut short (max_extra_runs 24): "
                                                      "failed 2/2 with the change, 0/1 on base")  # fmt: skip
    assert t.cut_short == "max_extra_runs 24"


def test_a_first_failing_run_wants_k_re_runs_and_k_plus_1_base_runs() -> None:
    assert runs_wanted(ev("f"), RULE) == (3, 4)
    assert runs_wanted(ev("f"), TriageRule(reruns=5)) == (5, 6)
    assert runs_wanted(ev("ff", "pp"), RULE) == (2, 2)
    assert runs_wanted(ev("ffff", "pppp"), RULE) == (0, 0)


def test_skip_and_incomplete_runs_are_no_evidence_and_run_again() -> None:
    assert runs_wanted(ev("fiii", "pipp"), RULE) == (3, 1)  # 1 pass/fail run with the change, 3 at the base
    t = triage(ev("ffiff", "ppppi"), RULE)
    assert (t.verdict, t.change_runs, t.base_runs) == ("new", 4, 4)


def test_a_board_fault_alone_is_never_new() -> None:
    for change in ("i", "iiii", "", "s", "ss"):
        e = ev(change, "pppp")
        assert triage(e, RULE).verdict != "new" and runs_wanted(e, RULE) == (0, 0)
    assert triage(ev("ii"), RULE).verdict == "unconfirmed"
    assert "incomplete" in triage(ev("ii"), RULE).evidence


def test_a_failing_test_the_change_adds_is_new() -> None:
    e = ev("f", absent_on_base=True)
    t = triage(e, RULE)
    assert t.verdict == "new" and "adds this test" in t.evidence and runs_wanted(e, RULE) == (0, 0)


def test_attack_a_test_the_change_adds_named_into_a_known_issues_glob_is_still_new() -> None:
    e = ev("f", absent_on_base=True, known_issue="KI-1")  # the change picked a name the entry's glob fits
    assert triage(e, RULE).verdict == "new"


def test_a_history_that_always_failed_runs_the_base_once() -> None:
    assert runs_wanted(ev("f", history="ffff"), RULE) == (0, 1)
    assert triage(ev("f", "f", "ffff"), RULE).verdict == "pre-existing"
    assert triage(ev("f", "p", "ffff"), RULE).verdict == "flaky"
    assert triage(ev("f", "", "ffff"), RULE).verdict == "pre-existing"


def test_only_the_rules_history_length_is_read() -> None:
    old_failure = "p" * 20 + "f"  # newest first: the failure is the 21st, beyond history=20
    assert triage(ev("ffff", "pppp", old_failure), RULE).verdict == "new"
    assert triage(ev("f", history=old_failure), TriageRule(history=21)).verdict == "flaky"


def test_fisher_is_the_exact_hypergeometric_tail() -> None:
    assert fisher_one_sided(4, 4, 0, 4) == pytest.approx(1 / 70)
    assert fisher_one_sided(3, 4, 0, 4) == pytest.approx(5 / 70)
    assert fisher_one_sided(0, 4, 0, 4) == 1.0 and fisher_one_sided(0, 0, 0, 0) == 1.0
    # brute force over every way to place the failures among the runs
    a, n1, b, n2 = 3, 5, 1, 6
    f, n = a + b, n1 + n2
    tail = sum(math.comb(f, x) * math.comb(n - f, n1 - x) for x in range(a, min(f, n1) + 1))
    assert fisher_one_sided(a, n1, b, n2) == pytest.approx(float(Fraction(tail, math.comb(n, n1))))
    with pytest.raises(ValueError, match="more failures than runs"):
        fisher_one_sided(5, 4, 0, 4)
    with pytest.raises(ValueError, match="negative"):
        fisher_one_sided(-1, 4, 0, 4)


def test_the_false_new_bound_is_computed_and_under_alpha() -> None:
    assert false_new_bound(RULE, 0) == pytest.approx(1 / 256)  # p^4 (1-p)^4 at p=0.5
    assert false_new_bound(RULE, 20) == pytest.approx(0.0024083, rel=1e-4)
    for h in (0, 20):
        bound = false_new_bound(RULE, h)
        assert all(false_new_rate(RULE, p / 100, h) <= bound + 1e-15 for p in range(101))
        assert bound <= RULE.alpha
    assert new_rate(RULE, 1.0, 0.0) == 1.0 and new_rate(RULE, 0.5, 0.0) == pytest.approx(1 / 16)
    assert new_rate(RULE, 0.5, 0.0, 20) == pytest.approx(7 / 16)


def test_failures_with_one_crash_title_are_one_problem() -> None:
    def t(path: str, title: str) -> Triage:
        return Triage(path, QEMU, "new", "", 1, 1, 1, 0, None, None, title, "")

    a, b, c, d, e = t("a", "BUG: x"), t("b", ""), t("c", "Oops: y"), t("d", "BUG: x"), t("e", "")
    groups = group_by_crash([a, b, c, d, e])
    assert groups == [("BUG: x", [a, d]), ("", [b]), ("Oops: y", [c]), ("", [e])]


def test_missing_runs_without_a_cap_are_unconfirmed_and_say_so() -> None:
    t = triage(ev("ffff"), RULE)  # no base commit to run at: no base runs came
    assert (t.verdict, t.evidence) == ("unconfirmed", "evidence incomplete (4 runs wanted on each side): "
                                                      "failed 4/4 with the change, 0/0 on base")  # fmt: skip


def test_a_cap_that_left_a_tests_evidence_complete_does_not_hide_its_new_failure() -> None:
    t = triage(ev("ffff", "pppp", cut_short="cap of 24 extra runs"), RULE)  # the cap cut another test's runs
    assert t.verdict == "new" and t.cut_short == "cap of 24 extra runs"


def test_statuses_other_than_pass_and_fail_are_no_evidence_either_way() -> None:
    forged = Evidence("t", QEMU, ("fail", "PASS", "pass ", "xfail"), ("pass",) * 4)
    assert runs_wanted(forged, RULE) == (3, 0)  # only the real fail counts: nothing dilutes it
    assert triage(forged, RULE).verdict == "unconfirmed"


def test_a_crash_title_does_not_move_a_verdict() -> None:
    plain, titled = ev("ffff", "pppp"), ev("ffff", "pppp", crash_title="known issue KI-1 `pass`")
    assert triage(titled, RULE).verdict == triage(plain, RULE).verdict == "new"
    assert triage(titled, RULE).crash_title == "known issue KI-1 `pass`"


def test_the_rates_read_no_more_history_than_the_rule_does() -> None:
    assert false_new_rate(RULE, 0.1, 500) == false_new_rate(RULE, 0.1, 20)
    assert false_new_bound(TriageRule(reruns=0), 20) == 0.0  # 1/1 against 0/21 is p=1/22: never `new`
    assert triage(ev("f", "p", "p" * 20), TriageRule(reruns=0)).verdict == "flaky"


def test_the_module_docstring_states_the_computed_figures() -> None:
    import bot.core.triage as module

    doc = module.__doc__ or ""
    for h in (0, 20):
        assert f"history {h}: false_new_bound = " in doc
        assert f"{false_new_bound(RULE, h):.4f}" in doc.split(f"history {h}: false_new_bound = ")[1][:40]
