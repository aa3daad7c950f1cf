"""A staging branch's push of four commits, one of which breaks a test, bisected by real workers (git, the
sandboxed build, QEMU): the first bad commit named, confirmed by its revert on the new head, and mailed to the
tree's push address with its author in Cc (a real SMTP server on 127.0.0.1). The remote, the workers and the
mail server are test_poller.py's."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from bot.forges.gitremote.poller import poll_all
from bot.store.models import Bisection, Pipeline
from tests.bot.forges.gitremote.test_poller import LIST, PATCHES, Remote, git, remote  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow


def push_and_run(remote: Remote) -> int:  # noqa: F811
    """Push the work clone's HEAD, poll, and wait for the push's pipeline; its id."""
    remote.push()
    (line,) = poll_all(remote.services.runtime)
    pipeline_id = int(line.rsplit(" ", 1)[1])
    remote.wait(pipeline_id)
    return pipeline_id


def ended_bisection(remote: Remote, timeout_s: float = 900) -> Bisection:  # noqa: F811
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with remote.services.runtime.store.session() as session:
            found = session.scalar(select(Bisection))
            if found is not None and found.state != "running":
                session.expunge_all()
                return found
        time.sleep(1)
    raise AssertionError(f"no bisection ended in {timeout_s} s")


def test_a_pushed_regression_is_bisected_confirmed_and_mailed(remote: Remote) -> None:  # noqa: F811
    runtime = remote.services.runtime
    poll_all(runtime)  # the branch first seen
    (remote.work / "NEWS").write_text("0\n")
    git(remote.work, "add", "NEWS")
    git(remote.work, "commit", "-qm", "news 0")
    good = git(remote.work, "rev-parse", "HEAD")
    before = push_and_run(remote)
    commits = []
    for n in range(1, 5):
        if n == 3:
            git(remote.work, "am", "-q", str(PATCHES / "fail.patch"))  # by Example Dev <dev@example.org>
        else:
            (remote.work / "NEWS").write_text(f"{n}\n")
            git(remote.work, "commit", "-qam", f"news {n}")
        commits.append(git(remote.work, "rev-parse", "HEAD"))
    pushed = push_and_run(remote)
    with runtime.store.session() as session:
        assert [p.result for p in session.scalars(select(Pipeline).where(Pipeline.id.in_([before, pushed])))] == [
            "pass", "fail"]  # fmt: skip

    found = ended_bisection(remote)
    assert (found.good_sha, found.bad_sha, found.pipeline_id) == (good, commits[-1], pushed)
    assert found.state == "done", found.message
    assert found.culprit_sha == commits[2]
    assert found.confidence.startswith(f"first bad commit {commits[2][:12]} (failed 1/1 there, passed 1/1 at its")
    assert "confirmed: its revert passes 1/1 on the new head" in found.confidence
    assert len([s for s in found.steps if s["role"] == "test"]) <= 4

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any("bisection" in m.message["Subject"] for m in remote.mail.received):
        time.sleep(0.2)
    [mail] = [m.message for m in remote.mail.received if "bisection" in m.message["Subject"]]
    assert mail["To"] == LIST and mail["Cc"] == "dev@example.org"
    assert found.confidence in mail.get_content()
