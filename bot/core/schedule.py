"""The test queue's rules: priorities, fair order, window size, quotas, and what a waiting job's report says.

Fairness is start-time fair queueing (SFQ). Each device class keeps a virtual time: the fair sequence of
the job it dispatched last. A job handed to the queue gets the sequence one past the newest of its own
(tree, submitter) that is still waiting, or the class's virtual time if none is. Inside a priority,
jobs go out in sequence order. A storm of 5,000 jobs from one tree therefore takes sequences V..V+4999,
and a lone tree's job queued later gets V' (the virtual time then), ahead of everything of the storm not
yet dispatched. Backlogged (tree, submitter) pairs are served round robin, one job each per turn.

This was chosen over "fewest in flight first" because the pick is one index range scan (priority, then
sequence), whatever the number of submitters or jobs waiting: the rule lives in a number computed once,
at hand-off, not in a GROUP BY run at every dispatch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Highest first. Health checks and bisection do not exist yet (issue 10, points 6 and triage): their
# pipelines are to use these kinds, and get these priorities, when they come.
PRIORITY_HEALTH_CHECK = 50  # also bypasses back-pressure: an offline class needs it to come back
PRIORITY_TRUSTED_PRE_MERGE = 40
PRIORITY_PRE_MERGE = 30
PRIORITY_POST_MERGE = 20
PRIORITY_BISECTION = 10
_KIND_PRIORITY = {"health-check": PRIORITY_HEALTH_CHECK, "post-merge": PRIORITY_POST_MERGE,
                  "bisection": PRIORITY_BISECTION}  # fmt: skip
QUOTA_SOURCES = ("ci",)  # Change.source of CI-job submissions (bot/intake/submissions.py)


def job_priority(pipeline_kind: str, author_trusted: bool) -> int:
    """The priority of a pipeline's test jobs: a trusted maintainer's pre-merge change before another's."""
    if pipeline_kind in _KIND_PRIORITY:
        return _KIND_PRIORITY[pipeline_kind]
    return PRIORITY_TRUSTED_PRE_MERGE if author_trusted else PRIORITY_PRE_MERGE


def fair_key(tree: str, submitter: str) -> str:
    """Who shares a class fairly with whom: one tree's submitter. A tree name has no newline."""
    return f"{tree}\n{submitter}"


def next_fair_seq(virtual_time: int, newest_waiting_seq: int | None) -> int:
    """A new job's fair sequence: behind its own (tree, submitter)'s waiting jobs, never behind the class's now."""
    if newest_waiting_seq is None:
        return virtual_time
    return max(virtual_time, newest_waiting_seq + 1)


def window_size(capacity: int, margin: int) -> int:
    """Messages a class may have in the broker: one per target its workers run at once, plus the margin."""
    return capacity + margin


def quota_key(source: str, submitter: str, author_trusted: bool) -> str | None:
    """The submitter quotas hold to (approved untrusted authors, CI jobs); None for trusted maintainers."""
    if source in QUOTA_SOURCES or not author_trusted:
        return f"{source}:{submitter}"
    return None


@dataclass(frozen=True)
class QuotaUse:
    """One quota holder's use now: test jobs queued or running, device-minutes in the last 24 hours."""

    submitter: str
    in_flight: int
    device_minutes: float


def quota_refusal(use: QuotaUse, max_in_flight: int, max_device_minutes: int) -> str | None:
    """Why the submitter's next job must wait, or None when it may go."""
    if use.in_flight >= max_in_flight:
        return (f"quota: {use.submitter} has {use.in_flight} test jobs queued or running, "
                f"the most a submitter under quota may have")  # fmt: skip
    if use.device_minutes >= max_device_minutes:
        return (f"quota: {use.submitter} used {math.floor(use.device_minutes)} of "
                f"{max_device_minutes} device-minutes in the last 24 hours")  # fmt: skip
    return None


def estimate_wait_min(ahead: int, capacity: int, recent_durations_s: Sequence[float]) -> int | None:
    """About how many minutes until a job with `ahead` jobs before it starts: the class runs `capacity`
    at once, each as long as its recent jobs took on average. None without a recent job to go by."""
    if not recent_durations_s:
        return None
    mean_s = sum(recent_durations_s) / len(recent_durations_s)
    # The jobs running now are half done on average; then the ones ahead go, `capacity` at a time.
    rounds = 0.5 + ahead / max(1, capacity)
    return max(1, math.ceil(rounds * mean_s / 60))


def waiting_title(device_class: str, ahead: int, minutes: int | None, reason: str = "") -> str:
    """The title of a waiting job's report: `waiting for qemu-x86_64: 12 ahead, about 6 min`."""
    title = f"waiting for {device_class}: {ahead} ahead"
    title += f", about {minutes} min" if minutes is not None else ", no recent job to estimate from"
    return f"{title} ({reason})" if reason else title


def over_limit_reason(device_class: str, waiting: int, limit: int) -> str:
    """Why a job was not taken by a class whose queue is full (back-pressure)."""
    return (f"not run: {device_class} has {waiting} test jobs waiting, its limit is {limit}; "
            f"retest when it has drained")  # fmt: skip
