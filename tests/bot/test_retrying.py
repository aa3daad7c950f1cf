"""Which control-task failures are retried, and after how long."""

from __future__ import annotations

import random
import time

import pytest
import requests
import sqlalchemy.exc
from github import GithubException, RateLimitExceededException

from bot.forges.github.client import classify_error
from bot.host.retrying import describe, is_transient, retry_delay
from workers.errors import InfraError, UserError

GITHUB = (classify_error,)


def github_error(status: int, headers: dict[str, str] | None = None, message: str = "x") -> GithubException:
    return GithubException(status, {"message": message}, headers or {})


@pytest.mark.parametrize(("exc", "transient"), [
    (github_error(500), True),
    (github_error(502), True),
    (github_error(429, {"Retry-After": "3"}), True),
    (github_error(403, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "0"}), True),
    (github_error(403, message="You have exceeded a secondary rate limit"), True),
    (RateLimitExceededException(403, {"message": "API rate limit exceeded"}, {}), True),
    (github_error(403, message="Resource not accessible by integration"), False),
    (github_error(404), False),
    (github_error(422, message="Validation Failed"), False),
    (requests.ConnectionError("reset"), True),
    (requests.exceptions.RetryError("too many 503 error responses"), True),
    (sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")), True),
    (InfraError("git fetch failed"), True),
    (UserError("the plan is invalid"), False),
    (KeyError("bug"), False),
    (ValueError("bug"), False),
])  # fmt: skip
def test_transient_or_not(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc, GITHUB) is transient


def test_without_the_github_classifier_its_errors_are_not_guessed_at() -> None:
    assert not is_transient(github_error(502))


def test_backoff_grows_with_full_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    exc = InfraError("x")
    for attempt in range(12):
        ceiling = min(60.0, 2.0 * 2**attempt)
        delays = [retry_delay(attempt, exc, base_s=2, max_s=60, rng=rng) for _ in range(200)]
        assert all(2.0 <= d <= ceiling for d in delays)
        if ceiling > 8:
            assert max(delays) - min(delays) > ceiling / 4, "jittered, not one value"


def test_the_forges_own_wait_is_honoured_within_the_cap() -> None:
    asked = github_error(429, {"Retry-After": "30"})
    assert retry_delay(0, asked, base_s=2, max_s=600, classifiers=GITHUB) == 30
    assert retry_delay(0, asked, base_s=2, max_s=10, classifiers=GITHUB) == 10
    reset = github_error(403, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(time.time()) + 120)})
    assert 100 <= retry_delay(0, reset, base_s=2, max_s=600, classifiers=GITHUB) <= 122


def test_describe_is_one_bounded_line() -> None:
    text = describe(ValueError("first line\n" + "x" * 2000))
    assert "\n" not in text and text.startswith("ValueError: first line") and len(text) <= 500
