"""Fakes of the services labgate talks to: they serve the real protocol and record what they were asked."""

from tests.fakes.github_api import FakeGitHub, RecordedRequest

__all__ = ["FakeGitHub", "RecordedRequest"]
