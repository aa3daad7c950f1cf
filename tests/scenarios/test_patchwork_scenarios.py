"""The mailing-list route, series to mail: FakePatchwork serving our own b4 series, real workers, git and
QEMU, and an aiosmtpd server on 127.0.0.1 taking the report mail."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.cli.main import main
from bot.forges.patchwork.client import PatchworkClient
from bot.host.bring_up import Services
from bot.intake.mailing_list import poll_patchwork
from bot.store.models import Job, Pipeline
from tests.bot.forges.mail.conftest import LocalController, RecordingHandler
from tests.conftest import EXAMPLES, make_git_repo
from tests.fakes.patchwork_api import FakePatchwork
from tests.scenarios.running import git, running_labgate, wait_for
from workers.checkout import locked, mirror_path

PROJECT = "hello"
SAMPLES = Path(__file__).parent.parent / "samples" / "mbox"
SAMPLE_BASE = "16a8a3ff86868e879a17fcccd9c0b147d7657b1c"
SAMPLE_CHANGE_ID = "20260302-mathx-lcm-4f1c2a9e7b3d"
PIPELINE_CONTEXTS = {"labgate-checkout", "labgate-build-x86_64", "labgate-qemu-x86_64-unit"}
LIST = "hello-devel@example.org"


@dataclass
class World:
    pw: FakePatchwork
    services: Services
    config_path: Path
    base_sha: str
    smtp: RecordingHandler
    origin: Path

    def series(self, version: int, *, sender: str | None = None, change_id: str | None = None,
               base: str | None = None) -> bytes:  # fmt: skip
        """Our b4 sample, as mailed against this origin (its base-commit is the sample repository's)."""
        text = (SAMPLES / f"b4-mathx-lcm-v{version}.mbox").read_text()
        text = text.replace(SAMPLE_BASE, base or self.base_sha)
        if change_id:
            text = text.replace(SAMPLE_CHANGE_ID, change_id)
        if sender:
            text = text.replace("Alice Example <alice@example.org>", sender)
        if version == 2:  # the sample names prerequisites Patchwork does not have (not applied yet)
            text = "\n".join(line for line in text.split("\n") if not line.startswith("prerequisite-"))
        return text.encode()

    def send(self, mbox: bytes, version: int = 1) -> int:
        subjects = ["mathx: add mathx_lcm()", "README: list the mathx helpers"]
        return self.pw.add_series(PROJECT, "mathx: add an lcm helper", subjects, version=version, mbox=mbox)

    def poll(self) -> list[str]:
        return poll_patchwork(self.services.runtime)

    def latest(self, patch_id: int) -> dict[str, dict[str, Any]]:
        """The newest check of each context on a patch (what Patchwork shows)."""
        shown: dict[str, dict[str, Any]] = {}
        for check in self.pw.checks(patch_id):
            # A label that is not plain words gets a digest after "--" (bot/forges/patchwork/checks.py).
            shown[check["context"].split("--")[0]] = check
        return shown

    def wait(self, predicate: Callable[[], bool], what: str, timeout_s: float = 150) -> None:
        wait_for(predicate, what, timeout_s, poll_s=0.3)

    def wait_final(self, series_id: int, pipeline_id: int | None = None) -> dict[int, dict[str, dict[str, Any]]]:
        """Every patch's pipeline checks settled; with `pipeline_id`, each one posted for that pipeline's
        jobs (a re-run's checks, not the settled ones of the run before it, still shown until it reports)."""

        def final() -> bool:
            jobs = self.job_ids(pipeline_id) if pipeline_id is not None else None  # drafted after its checkout
            for patch_id in self.pw.series_patches(series_id):
                shown = self.latest(patch_id)
                if not set(shown) >= PIPELINE_CONTEXTS or any(shown[c]["state"] == "pending"
                                                               for c in PIPELINE_CONTEXTS):  # fmt: skip
                    return False
                if jobs is not None and not all(shown[c]["target_url"].split("?")[0].rsplit("/", 1)[-1] in jobs
                                                for c in PIPELINE_CONTEXTS):  # fmt: skip
                    return False
            return True

        self.wait(final, f"final checks on every patch of series {series_id}")
        return {p: self.latest(p) for p in self.pw.series_patches(series_id)}

    def checkout_checks(self, series_id: int) -> list[dict[str, Any]]:
        """The checkout's settled check on each patch of a series that was let run."""
        self.wait(lambda: all("labgate-checkout" in self.latest(p) and self.latest(p)["labgate-checkout"]["state"]
                              != "pending" for p in self.pw.series_patches(series_id)), "checkout's check")  # fmt: skip
        return [self.latest(p)["labgate-checkout"] for p in self.pw.series_patches(series_id)]

    def job_states(self, kind: str) -> set[str]:
        """The states of the unfinished pipelines' jobs of one kind."""
        with self.services.runtime.store.session() as session:
            return {job.state for job in session.query(Job).join(Pipeline).where(Pipeline.state != "done",
                                                                                 Job.kind == kind)}  # fmt: skip

    def job_ids(self, pipeline_id: int) -> set[str]:
        """The ids of a pipeline's jobs as a job page's link ends (/jobs/<id>), kept ones' too."""
        with self.services.runtime.store.session() as session:
            pipeline = session.get(Pipeline, pipeline_id)
            assert pipeline is not None
            return {str(job.reused_from_id or job.id) for job in pipeline.jobs}

    def pipelines(self) -> list[tuple[int, str, str | None]]:
        with self.services.runtime.store.session() as session:
            return [(p.id, p.state, p.result) for p in session.query(Pipeline).order_by(Pipeline.id)]

    def approve(self, series_id: int, version: int, who: str = "maint") -> int:
        return main(["approve", str(series_id), "--version", str(version), "--as", who, "-c", str(self.config_path)])


@contextmanager
def running_world(root: Path, origin: Path, base_sha: str, *, tree: str, plan_file: Path, mail: str,
                  list_id: str, web: str = "") -> Iterator[World]:  # fmt: skip
    """labgate with real workers polling a FakePatchwork project for `tree`, mailing to an aiosmtpd server."""
    handler = RecordingHandler()
    smtp = LocalController(handler, hostname="127.0.0.1", port=0, server_hostname="mx.test", ready_timeout=10)
    smtp.start()
    with FakePatchwork() as pw:
        pw.add_project(PROJECT, list_id=list_id)
        pw.add_user("labgate-bot")
        pw.add_maintainer(PROJECT, "labgate-bot")
        (root / "pw-token").write_text(pw.add_token("labgate-bot"))
        (root / "labgate.yaml").write_text(
            f"data_dir: {root / 'data'}\n{web}"
            f"patchwork: {{url: '{pw.base_url}', token_file: {root / 'pw-token'}, "
            f"projects: [{{project: {PROJECT}, tree: {tree}}}]}}\n"
            f"smtp: {{host: 127.0.0.1, port: {smtp.port}, starttls: false, sender: 'labgate CI <ci@example.org>'}}\n"
            f"trees:\n  - name: {tree}\n    url: {origin}\n    plan_file: {plan_file}\n    mail: {mail}\n"
        )
        try:
            with running_labgate(root / "labgate.yaml") as services:
                yield World(pw, services, root / "labgate.yaml", base_sha, handler, origin)
        finally:
            smtp.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("patchwork")
    plain = root / "hello-src"
    shutil.copytree(EXAMPLES / "hello", plain)
    shutil.move(plain / ".labgate" / "plan.yaml", root / "hello-plan.yaml")  # the tree carries no plan
    shutil.rmtree(plain / ".labgate")
    origin = make_git_repo(plain, root / "origin")
    with running_world(root, origin, git(origin, "rev-parse", "HEAD"), tree="hello",
                       plan_file=root / "hello-plan.yaml", list_id="hello-devel.example.org",
                       mail=f"{{report: true, cc: ['{LIST}'], maintainers: [maint@example.org]}}",
                       web="web: {public_url: 'https://ci.example.org'}\n") as world:  # fmt: skip
        yield world


def test_series_waits_runs_once_approved_and_mails_once_in_its_thread(world: World) -> None:
    series_id = world.send(world.series(1))
    world.poll()
    patches = world.pw.series_patches(series_id)
    for patch_id in patches:  # Alice is nobody to this tree: every patch says how to let it run
        waiting = world.latest(patch_id)["labgate"]
        assert waiting["state"] == "pending"
        assert waiting["description"] == f"waiting for approval: labgate approve {series_id} --version 1"
    assert world.pipelines() == []
    assert world.approve(series_id, 2) == 2  # not the version the maintainer read: nothing approved
    assert world.pipelines() == []

    assert world.approve(series_id, 1) == 0
    shown = world.wait_final(series_id)
    for patch_id in patches:
        assert {shown[patch_id][c]["state"] for c in PIPELINE_CONTEXTS} == {"success"}, shown[patch_id]
        assert shown[patch_id]["labgate"]["state"] == "success"  # approved, by whom
        assert "maint" in shown[patch_id]["labgate"]["description"]
    world.wait(lambda: len(world.smtp.received) == 1, "the report mail")
    mail = world.smtp.received[0].message
    assert mail["In-Reply-To"] == "<20260302-mathx-lcm-v1-0-4f1c2a9e7b3d@example.org>"  # the cover letter
    assert mail["To"] == "alice@example.org" and mail["Cc"] == LIST
    assert mail["Subject"] == "Re: [PATCH 0/2] mathx: add an lcm helper"
    body = mail.get_content()
    assert "labgate: pass" in body and "labgate try" in body

    # A restart: a new poll reads the same window again and repeats nothing.
    posts = len(world.pw.requests_to("POST", r"/api/.*checks/"))
    assert posts >= 2 * (len(PIPELINE_CONTEXTS) * 2 + 2)  # queued/running/done and waiting/approved, each patch
    pipelines = world.pipelines()
    world.poll()
    assert world.approve(series_id, 1) == 0  # said twice: approved once, started once
    time.sleep(2)
    assert world.pipelines() == pipelines
    assert len(world.pw.requests_to("POST", r"/api/.*checks/")) == posts
    assert len(world.smtp.received) == 1


def test_v2_supersedes_a_running_v1(world: World) -> None:
    change_id = f"20260302-topic-{uuid.uuid4().hex[:8]}"
    v1 = world.send(world.series(1, change_id=change_id))
    world.poll()
    # v1 is still running when v2 comes, however slow the machine: its checkout waits for the worker's mirror.
    with locked(mirror_path(world.services.runtime.data_dir / "worker", "hello")):
        assert world.approve(v1, 1) == 0
        world.wait(lambda: world.job_states("checkout") == {"running"}, "v1's checkout running")
        running = [pid for pid, state, _ in world.pipelines() if state != "done"]
        v2 = world.send(world.series(2, change_id=change_id), version=2)
        world.poll()
    world.wait(lambda: all(state == "done" for pid, state, _ in world.pipelines() if pid in running), "v1 cancelled")
    assert {result for pid, _, result in world.pipelines() if pid in running} == {"cancelled"}
    for patch_id in world.pw.series_patches(v1):
        said = world.latest(patch_id)["labgate"]
        assert said["state"] == "warning" and said["description"].startswith("superseded by v2 http")
    for patch_id in world.pw.series_patches(v2):
        assert world.latest(patch_id)["labgate"]["state"] == "pending"  # v2 is approved on its own


def test_spoofed_maintainer_waits_and_a_forged_v2_cancels_nothing(world: World) -> None:
    change_id = f"20260302-maint-{uuid.uuid4().hex[:8]}"
    before = world.pipelines()
    v1 = world.send(world.series(1, change_id=change_id, sender="Maint Example <maint@example.org>"))
    world.poll()
    for patch_id in world.pw.series_patches(v1):  # a From: claim, proven by nothing: it waits
        assert world.latest(patch_id)["labgate"]["state"] == "pending"
    forged = world.send(world.series(2, change_id=change_id, sender="Mallory <mallory@evil.example>"), version=2)
    world.poll()
    for patch_id in world.pw.series_patches(v1):  # mallory's "v2" is graded below maint's claim
        assert world.latest(patch_id)["labgate"]["state"] == "pending"
    for patch_id in world.pw.series_patches(forged):
        assert world.latest(patch_id)["labgate"]["state"] == "pending"
    assert world.pipelines() == before


def test_unknown_base_commit_says_could_not_determine_base(world: World) -> None:
    series_id = world.send(
        world.series(1, change_id=f"x-{uuid.uuid4().hex[:8]}", base="0123456789abcdef" * 2 + "01234567")
    )
    world.poll()
    assert world.approve(series_id, 1) == 0
    for check in world.checkout_checks(series_id):
        assert check["state"] == "warning"
        assert "could not determine base" in check["description"]


def test_attack_a_base_commit_only_a_fork_has_says_could_not_determine_base(world: World) -> None:
    # A fork's commit with main's very files (the series applies on it): only where it lives is wrong.
    fork = git(world.origin, "commit-tree", "main^{tree}", "-p", "main", "-m", "a fork's commit")
    git(world.origin, "update-ref", "refs/pull/1/head", fork)
    series_id = world.send(world.series(1, change_id=f"fork-{uuid.uuid4().hex[:8]}", base=fork))
    world.poll()
    assert world.approve(series_id, 1) == 0
    for check in world.checkout_checks(series_id):
        assert check["state"] == "warning"
        assert check["description"] == (
            f"not tested: could not determine base: {fork} is not on any of the tree's branches (main)")


def test_delegating_every_patch_approves_the_series(world: World) -> None:
    world.pw.add_user("maint")
    world.pw.add_maintainer(PROJECT, "maint")
    series_id = world.send(world.series(1, change_id=f"20260302-deleg-{uuid.uuid4().hex[:8]}"))
    world.poll()
    first, second = world.pw.series_patches(series_id)
    before = world.pipelines()
    world.pw.delegate(first, "maint", by="maint")
    world.poll()
    assert world.pipelines() == before  # one patch of two: not the whole series
    assert world.latest(first)["labgate"]["state"] == "pending"
    world.pw.delegate(second, "maint", by="maint")
    world.poll()
    started = [pid for pid, _, _ in world.pipelines() if pid not in {p for p, _, _ in before}]
    assert len(started) == 1
    with world.services.runtime.store.session() as session:
        pipeline = session.get(Pipeline, started[0])
        assert pipeline is not None and pipeline.tier == "qemu"  # an approval's tier, not a trusted sender's
        assert [a.approver for a in pipeline.revision.change.approvals] == ["maint (Patchwork delegation)"]
    shown = world.wait_final(series_id)
    assert {shown[p][c]["state"] for p in (first, second) for c in PIPELINE_CONTEXTS} == {"success"}
    world.poll()  # the delegation events seen again after a restart start nothing more
    assert len([pid for pid, _, _ in world.pipelines() if pid not in {p for p, _, _ in before}]) == 1


def test_a_failing_patch_fails_on_patchwork_and_the_mail_quotes_the_failure(world: World) -> None:
    fail = (EXAMPLES / "hello" / "patches" / "fail.patch").read_bytes()  # no base-commit: the tree's branch
    series_id = world.pw.add_series(PROJECT, "mathx: multiply by repeated addition", ["mathx: multiply"],
                                    cover=False, mbox=fail)  # fmt: skip
    mails = len(world.smtp.received)
    world.poll()
    assert world.approve(series_id, 1) == 0
    (patch_id,) = world.pw.series_patches(series_id)
    shown = world.wait_final(series_id)[patch_id]
    unit = shown["labgate-qemu-x86_64-unit"]
    assert unit["state"] == "fail" and "math.mul" in unit["description"]
    assert shown["labgate-build-x86_64"]["state"] == "success"
    world.wait(lambda: len(world.smtp.received) == mails + 1, "the report mail")
    mail = world.smtp.received[-1].message
    assert mail["To"] == "dev@example.org"
    # No cover letter, and a patch mail with no Message-Id of its own: the thread is patch 1 as Patchwork has it.
    with PatchworkClient(world.pw.base_url) as client:
        patch_json = client.patch(patch_id)
    assert mail["Subject"] == f"Re: {patch_json['name']}"
    assert mail["In-Reply-To"] == mail["References"] == patch_json["msgid"]
    body = mail.get_content()
    assert "labgate: fail" in body and "math.mul" in body and "expected 42, got" in body


def test_cancel_and_retest_steer_a_series_from_the_cli(world: World) -> None:
    series_id = world.send(world.series(1, change_id=f"20260302-steer-{uuid.uuid4().hex[:8]}"))
    world.poll()
    before = {pid for pid, _, _ in world.pipelines()}
    assert world.approve(series_id, 1) == 0
    (started,) = [pid for pid, _, _ in world.pipelines() if pid not in before]
    cli = ["--series", str(series_id), "-c", str(world.config_path)]
    assert main(["cancel", *cli]) == 0
    world.wait(lambda: dict((p, s) for p, s, _ in world.pipelines())[started] == "done", "the cancel")
    assert dict((p, r) for p, _, r in world.pipelines())[started] == "cancelled"
    assert main(["cancel", *cli]) == 2  # nothing is running any more
    assert main(["retest", *cli]) == 0  # what did not pass (all of it, cancelled) runs again
    (again,) = [pid for pid, _, _ in world.pipelines() if pid not in before | {started}]
    shown = world.wait_final(series_id, again)
    assert {shown[p][c]["state"] for p in shown for c in PIPELINE_CONTEXTS} == {"success"}
    assert main(["retest", "--series", "999999", "-c", str(world.config_path)]) == 2  # no such series


# --- patch safety: a refused patch is named (Subject, Message-Id) with the rule, and nothing is built

PATCH_2 = '"[PATCH 2/2] README: list the mathx helpers" <20260302-mathx-lcm-v1-2-4f1c2a9e7b3d@example.org>'


def binary_diff(root: Path, path: str = "logo.png") -> str:
    """A real `git diff --binary` adding a small binary file (a GIT binary patch)."""
    repo = root / f"binary-{uuid.uuid4().hex[:8]}"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / path).write_bytes(bytes(range(256)))
    git(repo, "add", path)
    return git(repo, "diff", "--cached", "--binary") + "\n"


ESCAPES = {
    "rename to ../escape": "diff --git a/README.md b/../escape\nsimilarity index 100%\nrename from README.md\n"
                           "rename to ../escape\n",
    "create a/../../etc/x": "diff --git a/../../etc/x b/../../etc/x\nnew file mode 100644\nindex 0000000..587be6b\n"
                            "--- /dev/null\n+++ b/../../etc/x\n@@ -0,0 +1 @@\n+x\n",
}  # fmt: skip


def with_patch_2_diff(mbox: bytes, diff: str) -> bytes:
    """Our b4 series with patch 2's diff (README.md's) replaced by `diff`."""
    text = mbox.decode()
    start = text.index("diff --git a/README.md b/README.md")
    end = text.index("\n-- \nb4", start)
    return (text[:start] + diff.rstrip("\n") + "\n" + text[end:]).encode()


def assert_refused_before_building(world: World, series_id: int, rule: str, patch: str) -> int:
    """Every patch's checkout check names the patch and the rule (warning: not tested, never `fail`);
    the pipeline ran its checkout only: no build job was sent, no QEMU booted, no build check posted."""
    for check in world.checkout_checks(series_id):
        assert check["state"] == "warning", check
        assert check["description"].startswith(f"not tested: patch {patch}: "), check["description"]
        assert rule in check["description"] and len(check["description"]) <= 500, check["description"]
    world.wait(lambda: all(state == "done" for _, state, _ in world.pipelines()), "the refused pipeline to end")
    with world.services.runtime.store.session() as session:
        (pipeline,) = [p for p in session.query(Pipeline) if p.revision.change.number == series_id]
        ran = [(job.kind, job.state, job.started_at is not None) for job in pipeline.jobs]
        assert [kind for kind, _, started in ran if started] == ["checkout"], ran
        assert all(job.task_id is None for job in pipeline.jobs if job.kind != "checkout")  # never sent
        pipeline_id = pipeline.id
    for patch_id in world.pw.series_patches(series_id):
        assert not set(world.latest(patch_id)) & (PIPELINE_CONTEXTS - {"labgate-checkout"})
    return pipeline_id


def pipeline_mail(world: World, pipeline_id: int) -> Any:
    """The report mail of one pipeline (series share our sample's thread: told apart by the results link)."""
    link = f"https://ci.example.org/pipelines/{pipeline_id}"

    def links_it(mail: Any) -> bool:
        return link in (line.strip() for line in mail.get_content().splitlines())

    world.wait(lambda: any(links_it(m.message) for m in world.smtp.received), "the pipeline's mail")
    return next(m.message for m in world.smtp.received if links_it(m.message))


@pytest.mark.parametrize("diff_name", ["GIT binary patch", *ESCAPES])
def test_attack_a_binary_or_escaping_patch_2_is_refused_by_rule_and_nothing_is_built(
    world: World, diff_name: str, tmp_path: Path
) -> None:
    diff = binary_diff(tmp_path) if diff_name == "GIT binary patch" else ESCAPES[diff_name]
    rule = "binary patches are not accepted" if diff_name == "GIT binary patch" else "leaves the tree"
    mbox = with_patch_2_diff(world.series(1, change_id=f"20260302-safety-{uuid.uuid4().hex[:8]}"), diff)
    series_id = world.send(mbox)
    world.poll()
    assert world.approve(series_id, 1) == 0
    pipeline_id = assert_refused_before_building(world, series_id, rule, PATCH_2)
    body = pipeline_mail(world, pipeline_id).get_content()
    assert " ".join(body.split()).startswith(f"not tested: patch {PATCH_2}: 0002.patch:")  # as the checks
    assert rule in body and "labgate try" in body  # the submitter reads the rule and how to reproduce it


def test_attack_a_refused_patchs_subject_and_message_id_inject_nothing(world: World, tmp_path: Path) -> None:
    """Encoded line breaks, terminal escapes and 3000 characters in the Subject of the thread's own mail,
    an escape in its Message-Id: the check and the mail say the rule on one inert line, headers unharmed."""
    long = "=?utf-8?q?README:_list=0D=0ABcc:_victim@example.org=0A=1B[31mred=1B]0;pwn=07?=" + " spam" * 600
    mail = (f"From: Alice Example <alice@example.org>\nDate: Mon, 02 Mar 2026 09:00:02 +0000\n"
            f"Subject: [PATCH] {long}\nMessage-Id: <evil-{uuid.uuid4().hex[:8]}\x1b[2J@example.org>\n"
            "MIME-Version: 1.0\nContent-Type: text/plain; charset=\"utf-8\"\nContent-Transfer-Encoding: 8bit\n\n"
            f"A logo.\n\nSigned-off-by: Alice Example <alice@example.org>\n---\n{binary_diff(tmp_path)}")  # fmt: skip
    series_id = world.pw.add_series(PROJECT, "README: list", ["README: list"], cover=False,
                                    mbox=b"From mboxrd@z Thu Jan  1 00:00:00 1970\n" + mail.encode())  # fmt: skip
    world.poll()
    assert world.approve(series_id, 1) == 0
    (check,) = world.checkout_checks(series_id)
    description = check["description"]
    assert check["state"] == "warning" and description.isprintable() and len(description) <= 500, description
    assert description.startswith('not tested: patch "[PATCH] README: list Bcc: victim@example.org \ufffd[31mred')
    assert "…\" <evil-" in description and "\ufffd[2J@example.org>: 0001.patch:" in description, description
    assert description.endswith(": binary patches are not accepted"), description
    world.wait(lambda: all(state == "done" for _, state, _ in world.pipelines()), "the refused pipeline to end")
    with world.services.runtime.store.session() as session:
        (pipeline,) = [p for p in session.query(Pipeline) if p.revision.change.number == series_id]
        pipeline_id, shown_on_page = pipeline.id, pipeline.jobs[0].error_message or ""  # the job page's <pre>
    assert shown_on_page.isprintable() and shown_on_page in description, shown_on_page
    report = pipeline_mail(world, pipeline_id)
    for name, value in report.items():
        assert "\x1b" not in value and "\n" not in value.replace("\r\n ", "").replace("\n ", ""), (name, value)
    assert report["Bcc"] is None and "victim@example.org" not in report["To"] + (report["Cc"] or "")
    assert "\x1b" not in report.get_content()


def test_a_cover_letter_carrying_a_diff_is_never_applied(world: World, tmp_path: Path) -> None:
    """A 0/2 whose body holds a GIT binary patch: were it checked or applied, the checkout would refuse it."""
    mbox = world.series(1, change_id=f"20260302-cover-{uuid.uuid4().hex[:8]}").decode()
    cover_stat = " 3 files changed, 9 insertions(+), 1 deletion(-)\n"
    assert mbox.count(cover_stat) == 1
    series_id = world.send(mbox.replace(cover_stat, cover_stat + "\n" + binary_diff(tmp_path), 1).encode())
    world.poll()
    before = {pid for pid, _, _ in world.pipelines()}
    assert world.approve(series_id, 1) == 0
    assert [check["state"] for check in world.checkout_checks(series_id)] == ["success", "success"]
    (started,) = [pid for pid, _, _ in world.pipelines() if pid not in before]
    assert main(["cancel", "--series", str(series_id), "-c", str(world.config_path)]) in (0, 2)  # 2: already done
    world.wait(lambda: dict((p, s) for p, s, _ in world.pipelines())[started] == "done", "the run to end")
