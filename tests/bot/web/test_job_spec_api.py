"""GET /api/v1/jobs/{job_id}/spec: what reproducing each kind of job needs, and never a secret; a private
tree's job only with its pipeline's link or an operator token. Pipelines are driven through the real
result path (tests/bot/pipelines/kernel_lab.py): real dispatch, real tokens, a QEMU and a board class."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from bot.core.inventory import ClassEntry, Inventory
from bot.core.reproduce import JobSpecDoc, plan_reproduction
from bot.host.config import Caps, Config, DeviceClass, LabgridPlaces, Tree, Web
from bot.host.stores import open_runtime
from bot.pipelines.lifecycle import record_result
from bot.reporting.page_links import link_token, read_link_key
from bot.store.models import Job, Pipeline
from bot.web.app import create_app
from tests.bot.pipelines.kernel_lab import CHECKOUT_TOKEN, PLAN, QEMU, KernelLab, build_outputs
from workers.app import configure, lab_queue
from workers.spec import JobResult, TestCase

PUBLIC_URL = "https://ci.example.org"
OPERATOR_TOKEN = "operator-token-0123456789abcdef"
BOARD = "board-nuc"
COORDINATOR = "coord.internal:20408"
ENVIRONMENT = "targets: {main: {SECRET-ENVIRONMENT-TEXT: {}}}\n"
PATCH = b"Subject: [PATCH] printk: fix\n\n--- a/kernel/printk/printk.c\n+++ b/kernel/printk/printk.c\n"
BOARD_PLAN = PLAN + """\
  - name: onboard
    build: x86_64
    kernel: arch/x86/boot/bzImage
    device: {board: nuc}
    commands: [{name: b, run: "true"}]
"""
KINDS = ("checkout", "static", "base x86_64", "x86_64", f"{QEMU} boot", f"{BOARD} onboard")


@dataclass
class Ran:
    """One pipeline run to its end: its jobs by name and every result token its workers were given."""

    pipeline_id: int
    jobs: dict[str, Job]
    tokens: list[str]


@dataclass
class Site:
    lab: KernelLab
    client: TestClient
    public: Ran
    private: Ran
    other_private: Ran
    broker_url: str

    def spec(self, job_id: int, **kwargs: Any) -> Any:
        return self.client.get(f"/api/v1/jobs/{job_id}/spec", **kwargs)


def site_config(tmp_path: Path) -> Config:
    environment = tmp_path / "env.yaml.j2"
    environment.write_text(ENVIRONMENT)
    board = DeviceClass(name=BOARD, tags={"arch": "x86_64", "board": "nuc"}, lab="labgrid",
                        labgrid=LabgridPlaces(coordinator=COORDINATOR, place_tags={"board": "nuc"},
                                              environment=environment))  # fmt: skip
    return Config(
        data_dir=tmp_path / "data", caps=Caps(max_build_s=1800, max_job_s=600),
        trees=[Tree(name="linux", url="https://example.org/linux.git"),
               Tree(name="vault", url="https://example.org/vault.git", private=True)],
        device_classes=[DeviceClass(name=QEMU, tags={"arch": "x86_64", "platform": "qemu"}, capacity=32), board],
        web=Web(public_url=PUBLIC_URL, operator_token_sha256=[hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest()]),
    )  # fmt: skip


def run_pipeline(lab: KernelLab, tree: str, head: str = "c" * 40) -> Ran:
    """A pipeline of `tree` with a patch, its builds passing, its QEMU test failing and its board test passing,
    as workers report (the failure's triage runs then wait in the class's window: room for every pipeline's)."""
    pipeline_id = lab.checked_out(tree_name=tree, plan=BOARD_PLAN, head=head)
    with lab.runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        assert pipeline is not None
        pipeline.revision.patches = [{"name": "0001-fix.patch", "digest": lab.runtime.artifacts.put_bytes(PATCH)}]
    jobs = lab.jobs(pipeline_id)
    tokens = [CHECKOUT_TOKEN]
    for name, digest in (("base x86_64", "1" * 64), ("x86_64", "2" * 64)):
        if lab.jobs(pipeline_id)[name].state == "done":
            continue  # an earlier pipeline's base build, taken
        tokens.append(lab.message_for(jobs[name].id).result_token)
        lab.report(jobs[name].id, outputs=lab.stored(build_outputs(digest)))
    tokens.append(lab.message_for(jobs["static"].id).result_token)
    lab.report(jobs["static"].id, outputs={})
    for name, result in ((f"{QEMU} boot", "fail"), (f"{BOARD} onboard", "pass")):
        queue = lab_queue(jobs[name].spec["device_class"])
        message = lab.message_for(jobs[name].id, queue)
        tokens.append(message.result_token)
        record_result(lab.runtime, JobResult(job_id=message.job_id, delivery=1, result=result,
                                             result_token=message.result_token,
                                             tests=(TestCase(path="a", status=result),)))  # fmt: skip
    return Ran(pipeline_id, lab.jobs(pipeline_id), tokens)


@pytest.fixture
def site(tmp_path: Path, database_url: str, redis_db_url: str) -> Iterator[Site]:
    configure(redis_db_url, longest_job_s=60)
    runtime = open_runtime(site_config(tmp_path), database_url=database_url)
    lab = KernelLab(runtime, redis.Redis.from_url(redis_db_url))
    public, private = run_pipeline(lab, "linux"), run_pipeline(lab, "vault")
    other = run_pipeline(lab, "vault", "e" * 40)
    with TestClient(create_app(runtime), follow_redirects=False) as client:
        yield Site(lab, client, public, private, other, redis_db_url)
    lab.broker.close()
    runtime.store.engine.dispose()


def test_every_kind_of_job_has_its_spec(site: Site) -> None:
    jobs = site.public.jobs
    docs = {}
    for name in KINDS:
        answer = site.spec(jobs[name].id)
        assert answer.status_code == 200, (name, answer.text)
        assert answer.headers["content-type"] == "application/json"
        docs[name] = JobSpecDoc.model_validate(answer.json())
        assert docs[name].job.id == jobs[name].id and docs[name].problems == ()
        assert docs[name].tree.name == "linux" and docs[name].tree.url == "https://x/linux"
        assert docs[name].revision.base_sha == "b" * 40 and docs[name].revision.head_sha == "c" * 40
        assert [base64.b64decode(p.content_base64 or "") for p in docs[name].patches] == [PATCH]
        assert docs[name].reproduce == f"labgate reproduce {jobs[name].id} --server {PUBLIC_URL}"
    assert docs["checkout"].builds == () and docs["checkout"].test is None
    assert docs["static"].static is not None and docs["static"].static["head_sha"] == "c" * 40
    assert [(b.name, b.role, b.head_sha) for b in docs["base x86_64"].builds] == [("base x86_64", "base", "b" * 40)]
    test = docs[f"{QEMU} boot"]
    base, change = test.builds
    assert (change.name, change.needs, change.role, change.head_sha) == ("x86_64", "base x86_64", "change", "c" * 40)
    assert change.kernel is not None and change.kernel.arch == "x86_64"
    assert change.script == jobs["x86_64"].spec["script"] and "tinyconfig" in change.script
    assert docs["x86_64"].builds == (base, change)
    assert test.test is not None and [c.name for c in test.test.commands] == ["a"]
    assert (test.test.kernel, test.test.modules) == ("arch/x86/boot/bzImage", "modules.tar.gz")
    assert test.test.initramfs.artifacts == ("arch/x86/boot/bzImage", "modules.tar.gz")
    assert test.device_class is not None and test.device_class.lab == "qemu"
    assert test.device_class.qemu is not None and test.device_class.qemu.machine == "q35"
    board = docs[f"{BOARD} onboard"].device_class
    assert board is not None and (board.name, board.lab, board.qemu) == (BOARD, "labgrid", None)
    assert board.tags == {"arch": "x86_64", "board": "nuc"}


def test_a_board_jobs_spec_reproduces_on_the_closest_qemu_class(site: Site) -> None:
    doc = JobSpecDoc.model_validate(site.spec(site.public.jobs[f"{BOARD} onboard"].id).json())
    here = Inventory([ClassEntry(name="my-qemu", tags={"arch": "x86_64"}, memory_mb=1024)])
    reproduction = plan_reproduction(doc, here, trusted=False)
    assert reproduction.device_class == "my-qemu"
    assert reproduction.note == (f"job ran on board class {BOARD}; reproduced on the closest QEMU class my-qemu "
                                 "(same arch=x86_64)")  # fmt: skip


def test_no_spec_holds_a_secret(site: Site) -> None:
    """Every job of every pipeline, asked the way that opens it: no result token nor its hash, no link key or
    link token, no operator token, no broker URL, no board coordinator or environment, no exchange grant."""
    key = read_link_key(site.lab.runtime.config, site.lab.runtime.data_dir).decode()
    operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    for ran in (site.public, site.private):
        link = link_token(site.lab.runtime.config, site.lab.runtime.data_dir, ran.pipeline_id)
        secrets = [*ran.tokens, *(hashlib.sha256(t.encode()).hexdigest() for t in ran.tokens), key, link,
                   link.rsplit(".", 1)[-1], OPERATOR_TOKEN, site.broker_url, "redis://", COORDINATOR, "coord.internal",
                   "SECRET-ENVIRONMENT-TEXT", "sig=", "result_token", "grant", "askpass", "credential"]  # fmt: skip
        for job in ran.jobs.values():
            for ask in ({"params": {"token": link}}, {"headers": operator}):
                answer = site.spec(job.id, **ask)
                assert answer.status_code == 200, (job.name, answer.text)
                text = answer.text
                leaked = [s for s in secrets if s in text]
                assert leaked == [], (job.name, leaked)
                assert json.loads(text)["job"]["id"] == job.id


def test_a_private_trees_job_opens_only_with_its_pipelines_link_or_an_operator_token(site: Site) -> None:
    job_id = site.private.jobs[f"{QEMU} boot"].id
    missing = site.spec(999999)
    assert missing.status_code == 404
    shape = (missing.status_code, missing.content, missing.headers.get("cache-control"))
    config, data_dir = site.lab.runtime.config, site.lab.runtime.data_dir
    own = link_token(config, data_dir, site.private.pipeline_id)
    other = link_token(config, data_dir, site.other_private.pipeline_id)
    attacks: dict[str, dict[str, Any]] = {
        "no credential": {},
        "another pipeline's link": {"params": {"token": other}},
        "a tampered link": {"params": {"token": own[:-1] + ("0" if own[-1] != "0" else "1")}},
        "two tokens": {"params": [("token", own), ("token", own)]},
        "the operator token in the URL": {"params": {"token": OPERATOR_TOKEN}},
        "the link as a bearer token": {"headers": {"Authorization": f"Bearer {own}"}},
    }
    for what, ask in attacks.items():
        answer = site.spec(job_id, **ask)
        assert (answer.status_code, answer.content, answer.headers.get("cache-control")) == shape, what
        assert b"vault" not in answer.content
    opened = site.spec(job_id, params={"token": own})
    assert opened.status_code == 200 and opened.json()["tree"]["name"] == "vault"
    assert opened.headers["cache-control"] == "private, no-store" and opened.headers["referrer-policy"] == "no-referrer"
    assert site.spec(job_id, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}).status_code == 200
    # The public tree's jobs need nothing, and ignore a token.
    assert site.spec(site.public.jobs["x86_64"].id, params={"token": "junk"}).status_code == 200


def test_unknown_and_malformed_ids(site: Site) -> None:
    unknown = site.spec(424242)
    assert unknown.status_code == 404 and unknown.text == "not found\n"
    assert site.spec(99999999999999).status_code == 404  # over INTEGER: the database is never asked
    assert site.client.get("/api/v1/jobs/abc/spec").status_code == 400
    assert site.client.get("/api/v1/jobs/-1/spec").status_code == 400
    assert site.client.get("/api/v1/jobs/%D9%A1/spec").status_code == 400  # an Arabic-Indic digit one


def test_a_job_whose_stored_spec_is_incomplete_says_what_is_missing(site: Site) -> None:
    test_id = site.public.jobs[f"{QEMU} boot"].id
    with site.lab.runtime.store.session() as session:
        job = session.get(Job, test_id)
        assert job is not None
        job.spec = {key: value for key, value in job.spec.items() if key != "commands"}
    answer = site.spec(test_id)
    assert answer.status_code == 200
    doc = JobSpecDoc.model_validate(answer.json())
    assert doc.test is None and doc.problems == (f"test job {test_id}: its stored spec lacks or garbles commands",)
