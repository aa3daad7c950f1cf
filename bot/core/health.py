"""Rules for incomplete test jobs and the health of the places that ran them (issue 10, point 6).

An `incomplete` job failed through the lab's side, never the change's: it is run again, at most
MAX_RETRIES times, away from the place that failed it. A place whose last FAULT_LIMIT results were
infrastructure faults goes offline and gets a health check; any result that proves the place boots a
kernel to its runner clears its count.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import Enum
from typing import Any

from workers.spec import INCOMPLETE_CODES, PLACE_FAULT_CODES, TestCommand

MAX_RETRIES = 2  # automatic retries of an incomplete job: three attempts in all
FAULT_LIMIT = 3  # consecutive infrastructure faults that take a place offline
EVIDENCE_MAX_AGE_S = 24 * 3600  # an ordinary job's boot proves its class boots for this long
HEALTH_CHECK_KIND = "health-check"  # the pipeline kind (bot/core/schedule.py gives it the top priority)
HEALTH_CHECK_KERNEL = "debian"  # the lab's own kernel: a health check builds nothing
HEALTH_CHECK_TIMEOUT_S = 300
HEALTH_CHECK_COMMANDS = (TestCommand(name="alive", run="echo alive"),)
# The health-check pipelines' tree, change source and external ids: a name no configured tree can
# have (config tree names start with a letter or digit), and a source no forge or mail sink reports to.
LAB_TREE = "@lab"
LAB_SOURCE = "lab"


_PLACE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")


class PlaceVerdict(Enum):
    """What one test result says about the place it ran on."""

    FAULT = "fault"  # an infrastructure failure that counts against the place
    WORKS = "works"  # the place booted a kernel to its runner
    UNKNOWN = "unknown"  # neither: the count stays


def should_retry(result: str | None, error_code: str | None, retries_done: int) -> bool:
    """Only `incomplete` (our side failed) is retried, never `fail`, and at most MAX_RETRIES times."""
    return result == "incomplete" and error_code in INCOMPLETE_CODES and retries_done < MAX_RETRIES


def reached_runner(outputs: Mapping[str, Any]) -> bool:
    """Whether the target booted to the DUT runner (the worker's word in the job's outputs)."""
    return outputs.get("reached_runner") is True or outputs.get("ended") == "end-marker"


def place_verdict(result: str | None, error_code: str | None, outputs: Mapping[str, Any]) -> PlaceVerdict:
    if result == "incomplete" and error_code in PLACE_FAULT_CODES:
        return PlaceVerdict.FAULT
    if reached_runner(outputs):
        return PlaceVerdict.WORKS
    return PlaceVerdict.UNKNOWN


def next_fault_count(count: int, verdict: PlaceVerdict) -> int:
    if verdict is PlaceVerdict.FAULT:
        return count + 1
    if verdict is PlaceVerdict.WORKS:
        return 0
    return count


def goes_offline(count: int) -> bool:
    return count >= FAULT_LIMIT


def place_of(outputs: Mapping[str, Any]) -> str | None:
    """The place a result says it ran on, when it is a plain name (a worker's word: never markup)."""
    place = outputs.get("place")
    # Said in reports and titles as it is: a name of letters, digits and `._+-` has no Markdown in it
    # (no link, no @mention), whatever a compromised worker sends.
    if not isinstance(place, str) or not _PLACE_NAME.fullmatch(place):
        return None
    return place


def fault_description(error_code: str | None, error_message: str | None) -> str:
    text = (error_message or "").strip().splitlines()
    return f"{error_code}: {text[0][:300]}" if text else str(error_code)


def offline_reason(count: int, last_fault: str) -> str:
    return f"{count} consecutive infrastructure failures, the last {last_fault}"


def retry_note(attempt: int, error_code: str | None, place: str | None) -> str:
    """What a retried job's report says while it waits for its next attempt."""
    where = f" on {place}" if place else ""
    elsewhere = "elsewhere" if place else "again"
    return f"attempt {attempt} incomplete ({error_code}{where}): retrying {elsewhere}"


def avoid_after(avoid: Sequence[str], place: str | None) -> list[str]:
    """The places a retry keeps away from: the earlier ones and this attempt's."""
    return [*avoid, place] if place and place not in avoid else list(avoid)


def boot_evidence_text(job_id: int, device_class: str, at: datetime, *, health_check: bool) -> str:
    what = "health check" if health_check else "job"
    return f"{what} {job_id} booted to its runner on {device_class} at {at:%Y-%m-%d %H:%M} UTC"


def health_check_spec(device_class: str, place: str | None) -> dict[str, Any]:
    """A health check's Job.spec: the lab's own kernel and one trivial command, on one place or any of
    the class's (a class health check, which proves the class boots)."""
    return {
        "name": f"health check {place or device_class}", "device_class": device_class,
        "kernel": HEALTH_CHECK_KERNEL, "timeout_s": HEALTH_CHECK_TIMEOUT_S,
        "commands": [command.model_dump() for command in HEALTH_CHECK_COMMANDS],
        "health_check_place": place,
    }  # fmt: skip


def health_check_passed(result: str | None, outputs: Mapping[str, Any]) -> bool:
    """A health check passes when the job passed and the worker's own health-check word agrees."""
    word = outputs.get("health_check")
    agrees = not isinstance(word, Mapping) or word.get("passed", True) is True
    return result == "pass" and agrees
