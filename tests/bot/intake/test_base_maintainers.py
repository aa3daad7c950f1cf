"""MAINTAINERS read at a series' base (bot/intake/base_maintainers.py), through the real request message on the
broker's checkout queue, the checkout worker's code on a real git tree, and the answer kept and regraded: an
unsigned M: of a touched path runs at `mail.unverified_tier`; attacks: a series adding its sender to MAINTAINERS,
an M: of another path, a forged answer, and a hostile N: regex."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from bot.host.config import Config
from bot.host.stores import Runtime, open_runtime
from bot.intake.base_maintainers import record_answer
from bot.intake.mailing_list import poll_patchwork, regrade_series
from bot.store.models import Pipeline
from tests.bot.forges.patchwork.conftest import PROJECT
from tests.fakes.patchwork_api import FakePatchwork
from tests.workers.test_base_file import git
from workers.app import CHECKOUT_QUEUE, configure
from workers.base_file import answer_request
from workers.spec import READ_BASE_FILE_TASK, BaseFileAnswer, BaseFileRequest

MAINTAINERS = """MATHX
M:\tMaint Ainer <maint@example.org>
F:\tmathx/

DOCS
M:\tDoc Writer <docs@example.org>
F:\tdocs/

SLOW
M:\tSlow Poke <slow@example.org>
N:\t(a+)+$
"""


def patch_mail(sender: str, *files: tuple[str, str]) -> bytes:
    """A one-patch series from `sender`, adding one line to each (path, line)."""
    diff = "".join(f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n@@ -0,0 +1 @@\n+{line}\n"
                   for path, line in files)  # fmt: skip
    return (f"From mboxrd@z Thu Jan  1 00:00:00 1970\nFrom: Some One <{sender}>\nTo: list@example.org\n"
            f"Subject: [PATCH 1/1] mathx: a change\nDate: Tue, 25 Oct 2022 13:38:41 -0400\n"
            f"Message-Id: <{time.monotonic_ns()}@example.org>\n\nA change.\n\nSigned-off-by: Some One <{sender}>\n"
            f"---\n{diff}").encode()  # fmt: skip


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    repo = tmp_path / "origin"
    (repo / "mathx").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "MAINTAINERS").write_text(MAINTAINERS)
    (repo / "mathx" / "README").write_text("mathx\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    return repo


@pytest.fixture
def runtime(pw: FakePatchwork, origin: Path, tmp_path: Path, redis_db_url: str) -> Runtime:
    return make_runtime(pw, origin, tmp_path, redis_db_url, unverified_tier="qemu")


def make_runtime(pw: FakePatchwork, origin: Path, tmp_path: Path, redis_db_url: str, *,
                 unverified_tier: str) -> Runtime:
    configure(redis_db_url, longest_job_s=60)
    (tmp_path / "token").write_text(pw.add_token("labgate-bot"))
    mail = {"maintainers_file": "MAINTAINERS", "unverified_tier": unverified_tier}
    tree = {"name": "hello", "url": str(origin), "mail": mail}
    patchwork = {"url": pw.base_url, "token_file": str(tmp_path / "token"),
                 "projects": [{"project": PROJECT, "tree": "hello"}]}  # fmt: skip
    return open_runtime(Config.model_validate({"data_dir": str(tmp_path / "data"), "patchwork": patchwork,
                                               "trees": [tree]}))  # fmt: skip


def take_requests(redis_url: str) -> list[BaseFileRequest]:
    """What the broker holds for the checkout queue, as Celery's own message format carries it."""
    client = redis.Redis.from_url(redis_url)
    requests = []
    while (raw := client.rpop(CHECKOUT_QUEUE)) is not None:
        message = json.loads(raw)
        assert message["headers"]["task"] == READ_BASE_FILE_TASK
        args, _, _ = json.loads(base64.b64decode(message["body"]))
        requests.append(BaseFileRequest.model_validate_json(args[0]))
    return requests


def checkout_worker(runtime: Runtime, redis_url: str, tmp_path: Path) -> list[BaseFileAnswer]:
    """The checkout worker's code on each request (its Celery task is a thin wrapper around it)."""
    return [answer_request(r, tmp_path / "work", runtime.artifacts) for r in take_requests(redis_url)]


def send(pw: FakePatchwork, mbox: bytes) -> int:
    return pw.add_series(PROJECT, "mathx: a change", ["mathx: a change"], cover=False, mbox=mbox)


def said(pw: FakePatchwork, series_id: int) -> list[tuple[str, str]]:
    return [(c["state"], c["description"]) for p in pw.series_patches(series_id) for c in pw.checks(p)
            if c["context"] == "labgate"]  # fmt: skip


def pipelines(runtime: Runtime) -> list[str]:
    with runtime.store.session() as session:
        return list(session.scalars(select(Pipeline.tier)))


def grade(runtime: Runtime, pw: FakePatchwork, redis_db_url: str, tmp_path: Path, mbox: bytes) -> int:
    """Poll a new series, answer its request as the checkout worker would, and regrade it."""
    series_id = send(pw, mbox)
    poll_patchwork(runtime)
    assert said(pw, series_id)[-1] == ("pending", f"waiting for approval: labgate approve {series_id} --version 1")
    (answer,) = checkout_worker(runtime, redis_db_url, tmp_path)
    target = record_answer(runtime, answer)
    assert target == (pw.base_url, series_id)
    regrade_series(runtime, *target)
    return series_id


def test_an_unsigned_maintainer_of_a_touched_path_runs_at_the_unverified_tier(
    runtime: Runtime, pw: FakePatchwork, redis_db_url: str, tmp_path: Path
) -> None:
    series_id = grade(runtime, pw, redis_db_url, tmp_path, patch_mail("maint@example.org", ("mathx/lcm.c", "x")))
    assert pipelines(runtime) == ["qemu"]  # what grade_sender gives an unproven maintainer: the unverified tier
    state, text = said(pw, series_id)[-1]
    assert state == "success" and "M:/R: in MAINTAINERS at the base" in text
    regrade_series(runtime, pw.base_url, series_id)  # said twice (a redelivery): started once
    poll_patchwork(runtime)
    assert pipelines(runtime) == ["qemu"] and take_requests(redis_db_url) == []


def test_an_unsigned_maintainer_where_unverified_mail_gets_nothing_still_waits_and_is_told_once(
    pw: FakePatchwork, origin: Path, redis_db_url: str, tmp_path: Path
) -> None:
    runtime = make_runtime(pw, origin, tmp_path, redis_db_url, unverified_tier="none")
    series_id = grade(runtime, pw, redis_db_url, tmp_path, patch_mail("maint@example.org", ("mathx/lcm.c", "x")))
    assert pipelines(runtime) == []
    assert said(pw, series_id) == [("pending", f"waiting for approval: labgate approve {series_id} --version 1")]


def test_attack_a_series_adding_its_sender_to_maintainers_does_not_count(
    runtime: Runtime, pw: FakePatchwork, redis_db_url: str, tmp_path: Path
) -> None:
    evil = patch_mail("mallory@evil.example", ("mathx/lcm.c", "x"),
                      ("MAINTAINERS", "EVIL\nM:\tMallory <mallory@evil.example>\nF:\t*"))  # fmt: skip
    series_id = grade(runtime, pw, redis_db_url, tmp_path, evil)
    assert pipelines(runtime) == [] and said(pw, series_id)[-1][0] == "pending"


def test_attack_a_maintainer_of_another_path_does_not_count(
    runtime: Runtime, pw: FakePatchwork, redis_db_url: str, tmp_path: Path
) -> None:
    series_id = grade(runtime, pw, redis_db_url, tmp_path, patch_mail("docs@example.org", ("mathx/lcm.c", "x")))
    assert pipelines(runtime) == [] and said(pw, series_id)[-1][0] == "pending"


def test_attack_a_hostile_n_regex_does_not_hang_the_grading(
    runtime: Runtime, pw: FakePatchwork, redis_db_url: str, tmp_path: Path
) -> None:
    start = time.monotonic()
    series_id = grade(runtime, pw, redis_db_url, tmp_path, patch_mail("slow@example.org", ("a" * 3000 + "!", "x")))
    assert time.monotonic() - start < 20  # Python's re takes ages on (a+)+$ against a*3000 + "!"
    assert pipelines(runtime) == [] and said(pw, series_id)[-1][0] == "pending"


def test_attack_an_answer_without_the_requests_token_is_dropped(
    runtime: Runtime, pw: FakePatchwork, redis_db_url: str, tmp_path: Path
) -> None:
    send(pw, patch_mail("maint@example.org", ("mathx/lcm.c", "x")))
    poll_patchwork(runtime)
    (request,) = take_requests(redis_db_url)
    forged = BaseFileAnswer(request_id=request.request_id, token="guessed", base_sha="0" * 40, digest=None)
    assert record_answer(runtime, forged) is None
    assert record_answer(runtime, forged.model_copy(update={"request_id": "nope:1"})) is None


def two_patch_mbox(first: bytes, second: bytes) -> bytes:
    """One series of two patch mails (the second's Subject numbered 2/2)."""
    return first.replace(b"[PATCH 1/1]", b"[PATCH 1/2]") + b"\n" + second.replace(b"[PATCH 1/1]", b"[PATCH 2/2]")


def as_base64(mail: bytes) -> bytes:
    """The same mail with its body in base64, as a mail client may send it (git am decodes it)."""
    headers, _, body = mail.partition(b"\n\n")
    return (headers + b"\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
            b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(body))  # fmt: skip


def test_attack_a_maintainer_of_one_touched_path_is_no_maintainer_of_the_others(
    runtime: Runtime, pw: FakePatchwork, redis_db_url: str, tmp_path: Path
) -> None:
    # M: of mathx/ touching docs/ too: a line in their own file does not make them docs' maintainer.
    mail = patch_mail("maint@example.org", ("mathx/lcm.c", "x"), ("docs/howto.txt", "y"))
    series_id = grade(runtime, pw, redis_db_url, tmp_path, mail)
    assert pipelines(runtime) == [] and said(pw, series_id)[-1][0] == "pending"


def test_attack_a_diff_header_in_the_commit_message_claims_no_path(
    runtime: Runtime, pw: FakePatchwork, redis_db_url: str, tmp_path: Path
) -> None:
    # git am ends the message at "--- a/..." and git apply skips a header pair with no hunk: only docs/ changes.
    mail = patch_mail("maint@example.org", ("docs/howto.txt", "y")).replace(
        b"A change.\n", b"A change.\n\n--- a/mathx/lcm.c\n+++ b/mathx/lcm.c\n")
    series_id = grade(runtime, pw, redis_db_url, tmp_path, mail)
    assert pipelines(runtime) == [] and said(pw, series_id)[-1][0] == "pending"


def test_attack_a_base64_patch_does_not_hide_the_paths_it_touches(
    runtime: Runtime, pw: FakePatchwork, redis_db_url: str, tmp_path: Path
) -> None:
    hidden = as_base64(patch_mail("maint@example.org", ("docs/howto.txt", "y")))
    mbox = two_patch_mbox(patch_mail("maint@example.org", ("mathx/lcm.c", "x")), hidden)
    series_id = grade(runtime, pw, redis_db_url, tmp_path, mbox)
    assert pipelines(runtime) == [] and said(pw, series_id)[-1][0] == "pending"


def test_attack_a_rename_header_does_not_hide_the_path_it_removes(
    runtime: Runtime, pw: FakePatchwork, redis_db_url: str, tmp_path: Path
) -> None:
    # "rename from" names the old path itself: git moves docs/howto.txt away, whatever "diff --git" says.
    rename = (b"diff --git a/mathx/howto.txt b/mathx/howto.txt\nsimilarity index 100%\n"
              b"rename from docs/howto.txt\nrename to mathx/howto.txt\n")  # fmt: skip
    mail = patch_mail("maint@example.org", ("mathx/lcm.c", "x")) + rename
    series_id = grade(runtime, pw, redis_db_url, tmp_path, mail)
    assert pipelines(runtime) == [] and said(pw, series_id)[-1][0] == "pending"


def test_a_maintainer_of_every_touched_path_across_patches_still_runs(
    runtime: Runtime, pw: FakePatchwork, redis_db_url: str, tmp_path: Path
) -> None:
    mbox = two_patch_mbox(patch_mail("maint@example.org", ("mathx/lcm.c", "x")),
                          as_base64(patch_mail("maint@example.org", ("mathx/gcd.c", "y"))))  # fmt: skip
    grade(runtime, pw, redis_db_url, tmp_path, mbox)
    assert pipelines(runtime) == ["qemu"]


def test_attack_a_base_commit_from_before_the_sender_was_removed_from_maintainers_does_not_count(
    runtime: Runtime, pw: FakePatchwork, origin: Path, redis_db_url: str, tmp_path: Path
) -> None:
    # A former maintainer (removed, say, for cause) names a base of the branch from when they were listed.
    (origin / "MAINTAINERS").write_text(MAINTAINERS.replace("maint@example.org", "former@example.org"))
    git(origin, "commit", "-q", "-am", "MATHX: former maintainer")
    old = git(origin, "rev-parse", "HEAD").strip()
    (origin / "MAINTAINERS").write_text(MAINTAINERS)
    git(origin, "commit", "-q", "-am", "MATHX: former maintainer removed")
    mail = patch_mail("former@example.org", ("mathx/lcm.c", "x")) + f"\nbase-commit: {old}\n".encode()
    series_id = grade(runtime, pw, redis_db_url, tmp_path, mail)
    assert pipelines(runtime) == [] and said(pw, series_id)[-1][0] == "pending"
