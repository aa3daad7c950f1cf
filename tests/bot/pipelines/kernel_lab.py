"""A store, a real Redis broker and one QEMU class for pipelines of a kernel tree: checkouts recorded
through the real result path, and the build and static workers played by the test with results shaped
as workers/spec.py says they send them."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import select

from bot.host.config import Caps, Config, DeviceClass, Tree
from bot.host.stores import Runtime, open_runtime
from bot.pipelines.lifecycle import record_result
from bot.store.models import Change, Job, Pipeline, Revision
from bot.store.models import Tree as TreeRow
from workers.app import BUILD_QUEUE, CHECKOUT_QUEUE, configure, lab_queue
from workers.spec import JobResult, JobSpec, TestCase

TREE = "linux"
QEMU = "qemu-x86_64"
BASE, HEAD = "b" * 40, "c" * 40
CHECKOUT_TOKEN = "checkout-token"
PLAN = """\
version: 1
builds:
  - name: x86_64
    kernel: {arch: x86_64, config: tinyconfig, targets: [image, modules]}
tests:
  - name: boot
    build: x86_64
    kernel: arch/x86/boot/bzImage
    modules: modules.tar.gz
    device: {platform: qemu}
    commands: [{name: a, run: "true"}]
"""
PRINTK = "kernel/printk/printk.c"


def build_outputs(binary_digest: str = "1" * 64, warnings: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    """What a kernel build worker reports (workers/spec.py, "Build outputs")."""
    return {
        "artifacts": {"arch/x86/boot/bzImage": {"digest": "a" * 64, "mode": 0o644},
                      "modules.tar.gz": {"digest": "d" * 64, "mode": 0o644}},
        "warnings": [dict(w) for w in warnings], "warnings_complete": True,
        "recompiled": [PRINTK.replace(".c", ".o")], "binary_digest": binary_digest,
        "warm": {"mode": "warm", "prepare_s": 0.5, "make_s": 7.0, "collect_s": 0.2},
    }  # fmt: skip


def warning(line: int, text: str = "unused variable 'x'") -> dict[str, Any]:
    return {"file": PRINTK, "line": line, "col": 6, "level": "warning", "flag": "-Wunused-variable", "text": text}


@dataclass
class KernelLab:
    runtime: Runtime
    broker: redis.Redis

    def new_checkout(self, *, plan_from: str = "head", external_id: str | None = None, tree_name: str = TREE) -> int:
        """A running pipeline of the tree whose checkout is queued; the checkout job's id."""
        with self.runtime.store.session() as session:
            tree = session.scalar(select(TreeRow).where(TreeRow.name == tree_name))
            tree = tree or TreeRow(name=tree_name, url=f"https://x/{tree_name}")
            count = len(list(session.scalars(select(Change.id))))
            change = Change(tree=tree, source="github", external_id=external_id or str(count + 1), submitter="alice")
            pipeline = Pipeline(revision=Revision(change=change, base_ref="master"), state="running")
            checkout = Job(pipeline=pipeline, kind="checkout", name="checkout", queue=CHECKOUT_QUEUE, state="queued",
                           spec={"plan_path": ".labgate/plan.yaml", "plan_from": plan_from},
                           result_token_hash=hashlib.sha256(CHECKOUT_TOKEN.encode()).hexdigest())  # fmt: skip
            session.add(checkout)
            session.flush()
            return checkout.id

    def pass_checkout(self, checkout_id: int, *, plan: str = PLAN, head: str = HEAD,
                      changed: tuple[str, ...] = (PRINTK,), checkpatch: bool = True) -> None:  # fmt: skip
        """The checkout worker's pass, its outputs as workers/tasks.py sends them."""
        outputs = {"base_sha": BASE, "head_sha": head, "tested_sha": head, "plan_text": plan,
                   "changed_files": list(changed), "changed_lines": {f: [[10, 12]] for f in changed},
                   "tree_has": {"checkpatch": checkpatch, "kernel_doc": checkpatch}}  # fmt: skip
        record_result(self.runtime, JobResult(job_id=checkout_id, delivery=1, result="pass",
                                              result_token=CHECKOUT_TOKEN, outputs=outputs))  # fmt: skip

    def checked_out(self, **kwargs: Any) -> int:
        """A pipeline whose checkout just passed; its id."""
        checkout_id = self.new_checkout(
            plan_from=kwargs.pop("plan_from", "head"), tree_name=kwargs.pop("tree_name", TREE)
        )
        self.pass_checkout(checkout_id, **kwargs)
        return self.pipeline_of(checkout_id)

    def pipeline_of(self, job_id: int) -> int:
        with self.runtime.store.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job.pipeline_id

    def jobs(self, pipeline_id: int) -> dict[str, Job]:
        with self.runtime.store.session() as session:
            jobs = {job.name: job for job in session.scalars(select(Job).where(Job.pipeline_id == pipeline_id))}
            session.expunge_all()
            return jobs

    def pipeline(self, pipeline_id: int) -> Pipeline:
        with self.runtime.store.session() as session:
            pipeline = session.get(Pipeline, pipeline_id)
            assert pipeline is not None
            session.expunge_all()
            return pipeline

    def messages(self, queue: str = BUILD_QUEUE) -> list[JobSpec]:
        """The queue's messages in the broker, oldest first, left there."""
        return [spec_of_message(raw) for raw in reversed(self.broker.lrange(queue, 0, -1))]

    def message_for(self, job_id: int, queue: str = BUILD_QUEUE) -> JobSpec:
        found = [spec for spec in self.messages(queue) if spec.job_id == job_id]
        assert len(found) == 1, f"{len(found)} messages for job {job_id} in {queue}"
        return found[0]

    def report(self, job_id: int, result: str | None = "pass", *, outputs: dict[str, Any] | None = None,
               tests: tuple[TestCase, ...] = (), error_code: str | None = None) -> None:  # fmt: skip
        """The worker that took the job's message reports its result with the message's token."""
        spec = self.message_for(job_id, lab_queue(QEMU) if self.kind_of(job_id) == "test" else BUILD_QUEUE)
        record_result(self.runtime, JobResult(job_id=job_id, delivery=1, result=result, result_token=spec.result_token,  # type: ignore[arg-type]
                                              outputs=outputs if outputs is not None else self.stored(build_outputs()),
                                              tests=tests, error_code=error_code))  # fmt: skip

    def stored(self, outputs: dict[str, Any]) -> dict[str, Any]:
        """The outputs with each artifact's blob in the store, as a worker's upload leaves it (a finished build
        is shared only while its blobs are there)."""
        artifacts = {path: {**ref, "digest": self.runtime.artifacts.put_bytes(path.encode())}
                     for path, ref in outputs.get("artifacts", {}).items()}  # fmt: skip
        return {**outputs, "artifacts": artifacts}

    def kind_of(self, job_id: int) -> str:
        with self.runtime.store.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job.kind


def run_together(actions: Sequence[Callable[[], object]]) -> None:
    """Run the actions in threads released at once (as control workers record results side by side);
    an exception in any of them fails the test."""
    start = threading.Barrier(len(actions))
    failures: list[BaseException] = []

    def run(action: Callable[[], object]) -> None:
        try:
            start.wait()
            action()
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(action,)) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def spec_of_message(raw: bytes | str) -> JobSpec:
    """The JobSpec in a Celery message as its Redis transport keeps it."""
    message = json.loads(raw)
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return JobSpec.model_validate_json(args[0])


def kernel_config(tmp_path: Path) -> Config:
    return Config(data_dir=tmp_path / "data", caps=Caps(max_build_s=1800, max_job_s=600),
                  trees=[Tree(name=TREE, url="https://example.org/linux.git")],
                  device_classes=[DeviceClass(name=QEMU, tags={"arch": "x86_64", "platform": "qemu"},
                                              capacity=4)])  # fmt: skip


def open_kernel_lab(tmp_path: Path, database_url: str, redis_db_url: str) -> Iterator[KernelLab]:
    """The `kernel_lab` fixture (conftest.py): a KernelLab on its own store and Redis database."""
    configure(redis_db_url, longest_job_s=60)
    runtime = open_runtime(kernel_config(tmp_path), database_url=database_url)
    lab = KernelLab(runtime, redis.Redis.from_url(redis_db_url))
    yield lab
    lab.broker.close()
    runtime.store.engine.dispose()
