"""A series naming b4 prerequisites, against FakePatchwork and a real store, without workers: prerequisites
labgate recorded from the same project go first in what the checkout applies, and the series' checks
say so; missing ones, and ones from another project, are named in a warning and nothing runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.core.series import IdentityGrade
from bot.forges.patchwork.desk import SOURCE
from bot.forges.patchwork.intake import SenderTrust, least_trusted
from bot.host.stores import Runtime
from bot.intake.mailing_list import patchwork_client, poll_patchwork, series_intake
from bot.store.models import Change, Pipeline
from bot.store.once import OnceKeys
from tests.bot.forges.patchwork.conftest import PROJECT, open_patchwork_runtime
from tests.fakes.patchwork_api import FakePatchwork

MBOX = Path(__file__).parents[3] / "samples" / "mbox"
SAMPLE_BASE = "16a8a3ff86868e879a17fcccd9c0b147d7657b1c"
GCD_CHANGE_ID = "20260301-mathx-gcd-sign-9d2e1f0a3b4c"
FAKE_PATCH_IDS = ("3f1e0c2b9a8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f", "8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b")

_GCD_MAIL = """From mboxrd@z Thu Jan  1 00:00:00 1970
From: Alice Example <alice@example.org>
Date: Sun, 01 Mar 2026 09:00:0{n} +0000
Subject: [PATCH v3 {n}/1] {subject}
MIME-Version: 1.0
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: 8bit
Message-Id: <20260301-mathx-gcd-sign-v3-{n}-9d2e1f0a3b4c@example.org>
To: hello-devel@example.org
X-Mailer: b4 0.14.2

{body}
{signature}
b4 0.14.2

"""
_GCD_COVER = "The sign of mathx_gcd(), written down.\n\n---\nbase-commit: {base}\nchange-id: " + GCD_CHANGE_ID + "\n"
_GCD_PATCH = """mathx: document the sign of gcd

Signed-off-by: Alice Example <alice@example.org>
---
 GCD.md | 1 +
 1 file changed, 1 insertion(+)

diff --git a/GCD.md b/GCD.md
new file mode 100644
index 0000000..5b6a8e5
--- /dev/null
+++ b/GCD.md
@@ -0,0 +1 @@
+mathx_gcd() of negative numbers is never negative.
"""


def gcd_series(base: str = SAMPLE_BASE) -> bytes:
    """v3 of the series the lcm v2 sample names as its prerequisite-change-id: a cover letter and one patch
    (a new file, so it applies on examples/hello with the lcm patches after it)."""
    mail = _GCD_MAIL.replace("{signature}", "-- ")  # the "-- " line before b4's version
    cover = mail.format(n=0, subject="mathx: gcd of negative numbers", body=_GCD_COVER.format(base=base))
    return (cover + mail.format(n=1, subject="mathx: document the sign of gcd", body=_GCD_PATCH)).encode()


def real_patch_id(mail: bytes) -> str:
    """What b4 writes as prerequisite-patch-id: `git patch-id --stable` of the patch."""
    out = subprocess.run(["git", "patch-id", "--stable"], input=mail, capture_output=True, check=True).stdout
    return out.decode().split()[0]


def lcm_v2_on_gcd(base: str = SAMPLE_BASE) -> bytes:
    """The lcm v2 sample, its prerequisite-patch-id the gcd patch's real one (the sample's are made up)."""
    patch_mail = gcd_series(base).split(b"\nFrom mboxrd@z")[1]
    text = (MBOX / "b4-mathx-lcm-v2.mbox").read_text().replace(SAMPLE_BASE, base)
    text = text.replace(FAKE_PATCH_IDS[0], real_patch_id(patch_mail))
    return text.replace(f"prerequisite-patch-id: {FAKE_PATCH_IDS[1]}\n", "").encode()


@pytest.fixture
def runtime(pw: FakePatchwork, tmp_path: Path, redis_db_url: str) -> Runtime:
    """Project `netdev` and project `other`, both tested on tree hello."""
    pw.add_project("other")
    return open_patchwork_runtime(pw, tmp_path, {PROJECT: "hello", "other": "hello"}, redis_db_url)


def send(pw: FakePatchwork, mbox: bytes, project: str = PROJECT, version: int = 2) -> int:
    return pw.add_series(project, "mathx: add an lcm helper", ["a", "b"], version=version, mbox=mbox)


def checks(pw: FakePatchwork, series_id: int, context: str) -> list[dict[str, str]]:
    return [c for p in pw.series_patches(series_id) for c in pw.checks(p) if c["context"] == context]


def test_a_missing_prerequisite_is_named_on_every_patch_and_nothing_runs(pw: FakePatchwork, runtime: Runtime) -> None:
    series_id = send(pw, (MBOX / "b4-mathx-lcm-v2.mbox").read_bytes())
    poll_patchwork(runtime)
    said = checks(pw, series_id, "labgate")
    assert len(said) == 2 and {c["state"] for c in said} == {"warning"}
    assert {c["description"] for c in said} == {
        f"not tested: prerequisites not found on Patchwork: change-id {GCD_CHANGE_ID}:v3, "
        f"patch-id {FAKE_PATCH_IDS[0]}, patch-id {FAKE_PATCH_IDS[1]}"}  # fmt: skip
    with runtime.store.session() as session:
        assert session.scalars(select(Change.id)).all() == []  # nothing to approve: nothing recorded as a change


def test_a_recorded_prerequisite_series_goes_first_and_the_checks_say_so(pw: FakePatchwork, runtime: Runtime) -> None:
    gcd = send(pw, gcd_series(), version=3)
    lcm = send(pw, lcm_v2_on_gcd())
    poll_patchwork(runtime)
    (applied,) = {c["description"] for c in checks(pw, lcm, "labgate-prerequisites")}
    assert applied == f"applied first: change-id {GCD_CHANGE_ID}:v3 (series {gcd} v3)"
    assert {c["state"] for c in checks(pw, lcm, "labgate")} == {"pending"}  # Alice waits, as without prerequisites
    with patchwork_client(runtime) as client:
        intake = series_intake(runtime, client)
        tree, _, desk, _ = intake.open(intake.record(lcm))
        patches = desk.revision(desk.head_key)["patches"]
        assert [name for name, _ in patches] == [f"prerequisite series {gcd} v3 0001.patch", "0001.patch", "0002.patch"]
        assert b"+mathx_gcd() of negative numbers is never negative." in patches[0][1]
        assert patches[1:] == intake.read_record(intake.record(lcm), tree).patches  # then its own, as they were
        # The approval binds the prerequisites too: the head key is over every patch applied.
        assert desk.head_key != type(desk)(client, desk.record, desk.author, desk.base_ref, patches[1:]).head_key
    poll_patchwork(runtime)  # a restart's poll says nothing twice
    assert len(checks(pw, lcm, "labgate-prerequisites")) == 2


def test_a_prerequisite_that_comes_after_the_series_is_applied_once_a_maintainer_approves(
    pw: FakePatchwork, runtime: Runtime
) -> None:
    """Refused while gcd v3 was not there (nothing is re-read by itself); gcd arrives; `labgate approve`
    then runs lcm with gcd's patch first. (A queued pipeline only: no worker runs here.)"""
    lcm = send(pw, lcm_v2_on_gcd())
    poll_patchwork(runtime)
    assert {c["state"] for c in checks(pw, lcm, "labgate")} == {"warning"}
    gcd = send(pw, gcd_series(), version=3)
    poll_patchwork(runtime)
    with patchwork_client(runtime) as client:
        intake = series_intake(runtime, client)
        done = intake.approve(intake.record(lcm), "maint", False, OnceKeys(SOURCE, "cli:approve"))
    assert done[-1].startswith("pipeline ")
    with runtime.store.session() as session:
        (pipeline,) = session.scalars(select(Pipeline)).all()
        assert [p["name"] for p in pipeline.revision.patches] == [f"prerequisite series {gcd} v3 0001.patch",
                                                                  "0001.patch", "0002.patch"]  # fmt: skip
    (applied,) = {c["description"] for c in checks(pw, lcm, "labgate-prerequisites")}
    assert applied == f"applied first: change-id {GCD_CHANGE_ID}:v3 (series {gcd} v3)"


def test_attack_a_prerequisite_of_another_project_is_not_pulled_in(pw: FakePatchwork, runtime: Runtime) -> None:
    """Project `other` is tested on the very same tree, and still: a series names what its own project has."""
    send(pw, gcd_series(), project="other", version=3)
    lcm = send(pw, lcm_v2_on_gcd())
    poll_patchwork(runtime)
    (said,) = {c["description"] for c in checks(pw, lcm, "labgate")}
    assert said.startswith(f"not tested: prerequisites not found on Patchwork: change-id {GCD_CHANGE_ID}:v3, patch-id ")
    assert checks(pw, lcm, "labgate-prerequisites") == []


def test_the_run_gets_what_the_least_trusted_sender_of_its_patches_gets() -> None:
    verified = SenderTrust(IdentityGrade.VERIFIED, True, None, "head", "verified maint@example.org (patatt)")
    claimed = SenderTrust(IdentityGrade.MAINTAINER_CLAIM, True, "qemu", "base", "From: claims maintainer")
    stranger = SenderTrust(IdentityGrade.UNVERIFIED, False, None, "base", "mallory@example.org: no signature")
    assert least_trusted([("the series", verified), ("prerequisite series 3 v1", verified)]) is verified
    weakest = least_trusted([("the series", verified), ("prerequisite series 3 v1", claimed),
                             ("prerequisite series 4 v2", stranger)])  # fmt: skip
    assert (weakest.trusted, weakest.grade, weakest.plan_from) == (False, IdentityGrade.UNVERIFIED, "base")
    assert weakest.reason == "prerequisite series 4 v2: mallory@example.org: no signature"
    capped = least_trusted([("the series", verified), ("prerequisite series 3 v1", claimed)])
    assert capped.tier_cap == "qemu" and capped.reason.startswith("prerequisite series 3 v1: ")
