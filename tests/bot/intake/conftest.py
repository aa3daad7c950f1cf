"""Fixtures of the mailing-list intake tests: a public-inbox archive on 127.0.0.1, and FakePatchwork's
project (tests/bot/forges/patchwork/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.bot.forges.mail.test_identity import Archive
from tests.bot.forges.patchwork.conftest import pw

__all__ = ["archive", "pw"]


@pytest.fixture
def archive() -> Iterator[Archive]:
    served = Archive()
    yield served
    served.close()
