"""A FakePatchwork with project `netdev`, whose maintainer is `labgate-bot`; `stranger` is nobody there."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.patchwork_api import FakePatchwork

PROJECT = "netdev"


@pytest.fixture
def pw() -> Iterator[FakePatchwork]:
    with FakePatchwork() as fake:
        fake.add_project(PROJECT)
        fake.add_user("labgate-bot")
        fake.add_user("stranger")
        fake.add_maintainer(PROJECT, "labgate-bot")
        yield fake
