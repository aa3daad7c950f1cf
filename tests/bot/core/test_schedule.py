"""The test queue's pure rules: priorities, fair sequences, quotas and the waiting report's words."""

from __future__ import annotations

from bot.core.schedule import (
    QuotaUse,
    estimate_wait_min,
    job_priority,
    next_fair_seq,
    over_limit_reason,
    quota_key,
    quota_refusal,
    waiting_title,
    window_size,
)


def test_priorities_highest_first() -> None:
    ranked = [job_priority("health-check", True), job_priority("pre-merge", True), job_priority("pre-merge", False),
              job_priority("post-merge", True), job_priority("bisection", True)]  # fmt: skip
    assert ranked == sorted(ranked, reverse=True) and len(set(ranked)) == 5
    assert job_priority("post-merge", False) == job_priority("post-merge", True)  # a push is a push


def test_a_newcomer_starts_at_the_class_now_and_a_backlog_behind_itself() -> None:
    assert next_fair_seq(40, None) == 40  # ahead of every waiting job of others, whose sequences are > 40
    assert next_fair_seq(40, 4999) == 5000
    assert next_fair_seq(40, 12) == 40  # a backlog the class has moved past: not behind its own old turn


def test_quotas_hold_approved_authors_and_ci_jobs_only() -> None:
    assert quota_key("github", "maint", True) is None
    assert quota_key("github", "stranger", False) == "github:stranger"
    assert quota_key("ci", "repo:octo/x", True) == "ci:repo:octo/x"
    assert quota_refusal(QuotaUse("s", 1, 10.0), 2, 60) is None
    assert quota_refusal(QuotaUse("s", 2, 10.0), 2, 60) == (
        "quota: s has 2 test jobs queued or running, the most a submitter under quota may have"
    )
    assert quota_refusal(QuotaUse("s", 0, 60.5), 2, 60) == "quota: s used 60 of 60 device-minutes in the last 24 hours"


def test_the_waiting_words() -> None:
    assert window_size(4, 1) == 5
    assert estimate_wait_min(0, 4, []) is None
    assert estimate_wait_min(8, 4, [300.0, 300.0]) == 13  # 2.5 rounds of 5 min
    assert estimate_wait_min(0, 4, [1.0]) == 1  # never "about 0 min"
    assert waiting_title("qemu-x86_64", 12, 6) == "waiting for qemu-x86_64: 12 ahead, about 6 min"
    assert waiting_title("b", 0, None, "offline: rack") == (
        "waiting for b: 0 ahead, no recent job to estimate from (offline: rack)"
    )
    assert (
        over_limit_reason("b", 9, 9) == "not run: b has 9 test jobs waiting, its limit is 9; retest when it has drained"
    )
