"""Which failures of a control task are worth trying again, and when.

Forges and our own infrastructure fail for a while and come back: a 502 from GitHub's edge,
a rate limit, PostgreSQL restarting, the broker's connection dropping. Those are retried with
exponential backoff (full jitter, so a burst of failed tasks does not come back as a burst).
Everything else (a 404, a 422, a bug of ours) will fail the same way again: it is recorded once.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
import kombu.exceptions
import redis
import requests
import sqlalchemy.exc

from workers.errors import InfraError

# What answering "later" looks like from the libraries every control task uses.
_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    InfraError,
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.RetryError,  # urllib3 spent its own retries on 5xx answers: still "later"
    httpx.TransportError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    # A unique key another attempt of the same work committed first (bot/store/once.py): the retry finds it done.
    sqlalchemy.exc.IntegrityError,
    redis.ConnectionError,
    redis.TimeoutError,
    kombu.exceptions.OperationalError,
    ConnectionError,
    TimeoutError,
)


@dataclass(frozen=True)
class Verdict:
    """A forge adapter's reading of one of its errors."""

    transient: bool
    wait_s: float | None = None  # what the forge asked for (Retry-After, a rate limit's reset)


# A forge adapter's classifier: a Verdict for its own errors, None for anything else.
Classifier = Callable[[BaseException], Verdict | None]


def _verdict(exc: BaseException, classifiers: Sequence[Classifier]) -> Verdict:
    for classify in classifiers:
        verdict = classify(exc)
        if verdict is not None:
            return verdict
    return Verdict(isinstance(exc, _TRANSIENT_TYPES))


def is_transient(exc: BaseException, classifiers: Sequence[Classifier] = ()) -> bool:
    """Whether the same call may succeed later."""
    return _verdict(exc, classifiers).transient


def retry_delay(attempt: int, exc: BaseException, *, base_s: float, max_s: float,
                classifiers: Sequence[Classifier] = (), rng: random.Random | None = None) -> float:  # fmt: skip
    """Seconds to wait before attempt `attempt + 1`: what the forge asked for if it said, else
    full-jitter exponential backoff; never over `max_s`."""
    asked = _verdict(exc, classifiers).wait_s
    if asked is not None:
        return min(max_s, max(asked, base_s))
    ceiling = min(max_s, base_s * (2**attempt))
    return (rng or random).uniform(base_s, max(base_s, ceiling))


def describe(exc: BaseException) -> str:
    """One line for the delivery's record and the log."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:500]
