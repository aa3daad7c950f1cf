"""The rules of retries and place health (bot/core/health.py), pure."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.core.health import (
    FAULT_LIMIT,
    MAX_RETRIES,
    PlaceVerdict,
    avoid_after,
    boot_evidence_text,
    goes_offline,
    health_check_passed,
    health_check_spec,
    next_fault_count,
    place_of,
    place_verdict,
    retry_note,
    should_retry,
)
from workers.spec import INCOMPLETE_CODES, INCOMPLETE_PLACE_UNAVAILABLE, PLACE_FAULT_CODES, TestCommand


@pytest.mark.parametrize("code", INCOMPLETE_CODES)
def test_every_incomplete_code_is_retried_twice_then_not(code: str) -> None:
    assert [should_retry("incomplete", code, done) for done in range(4)] == [True, True, False, False]
    assert MAX_RETRIES == 2


NOT_RETRIED = [("fail", None), ("fail", "power-driver-error"), ("pass", None), ("skip", None), (None, "infra-error"),
               ("incomplete", "made-up")]  # fmt: skip


@pytest.mark.parametrize(("result", "code"), NOT_RETRIED)
def test_only_incomplete_with_a_known_code_is_retried(result: str | None, code: str | None) -> None:
    assert not should_retry(result, code, 0)


def test_a_place_fault_counts_and_a_boot_to_the_runner_clears() -> None:
    assert place_verdict("incomplete", "power-driver-error", {}) is PlaceVerdict.FAULT
    assert place_verdict("fail", None, {"reached_runner": True}) is PlaceVerdict.WORKS
    assert place_verdict("pass", None, {"ended": "end-marker"}) is PlaceVerdict.WORKS
    # Nobody could get a place: no one place is to blame.
    assert INCOMPLETE_PLACE_UNAVAILABLE not in PLACE_FAULT_CODES
    assert place_verdict("incomplete", INCOMPLETE_PLACE_UNAVAILABLE, {}) is PlaceVerdict.UNKNOWN
    # A change's kernel that broke boot says nothing of the place.
    assert place_verdict("fail", None, {"reached_runner": False}) is PlaceVerdict.UNKNOWN
    assert place_verdict("fail", None, {"reached_runner": "yes"}) is PlaceVerdict.UNKNOWN  # not a bool: not believed
    count = 0
    for verdict in (PlaceVerdict.FAULT, PlaceVerdict.FAULT, PlaceVerdict.UNKNOWN):
        count = next_fault_count(count, verdict)
    assert count == 2 and not goes_offline(count)
    assert goes_offline(next_fault_count(count, PlaceVerdict.FAULT)) and FAULT_LIMIT == 3
    assert next_fault_count(count, PlaceVerdict.WORKS) == 0


def test_a_place_name_is_taken_only_when_plain() -> None:
    assert place_of({"place": "standin-1"}) == "standin-1"
    for bad in (None, "", 7, ["a"], "a\nb", "x" * 201, "[ok](https://evil.example)", "@maintainers", "a b"):
        assert place_of({"place": bad}) is None


def test_what_the_report_and_the_retry_say() -> None:
    assert retry_note(1, "power-driver-error", "place-a") == \
        "attempt 1 incomplete (power-driver-error on place-a): retrying elsewhere"  # fmt: skip
    assert retry_note(2, "qemu-crashed", None) == "attempt 2 incomplete (qemu-crashed): retrying again"
    assert avoid_after(["a"], "b") == ["a", "b"] and avoid_after(["a"], "a") == ["a"] and avoid_after([], None) == []
    at = datetime(2026, 12, 7, 12, 1, tzinfo=UTC)
    assert boot_evidence_text(123, "qemu-x86_64", at, health_check=False) == \
        "job 123 booted to its runner on qemu-x86_64 at 2026-12-07 12:01 UTC"  # fmt: skip


def test_a_health_check_is_the_labs_kernel_and_one_trivial_command() -> None:
    spec = health_check_spec("board-x86", "standin-1")
    assert spec["kernel"] == "debian" and spec["health_check_place"] == "standin-1"
    assert [TestCommand(**command) for command in spec["commands"]] == [TestCommand(name="alive", run="echo alive")]
    assert health_check_spec("qemu-x86_64", None)["health_check_place"] is None


def test_a_health_check_passes_only_when_the_job_and_the_workers_word_agree() -> None:
    assert health_check_passed("pass", {"health_check": {"passed": True}})
    assert health_check_passed("pass", {})
    assert not health_check_passed("pass", {"health_check": {"passed": False}})
    assert not health_check_passed("pass", {"health_check": {"passed": "yes"}})
    assert not health_check_passed("fail", {"health_check": {"passed": True}})
    assert not health_check_passed("incomplete", {})
