"""A job's reproduction spec read from the store (bot/core/reproduce.py JobSpecDoc): never a secret.

Every field is picked by name from what the job was dispatched with: no result token (only its hash is
stored, and not read here), no checkout credential (a file, removed after), no exchange grant (made at
dispatch, never stored), no broker URL, no page key or link token, no labgrid coordinator or places.
"""

from __future__ import annotations

import base64
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.core.reproduce import (
    BuildEntry,
    DeviceClassInfo,
    InitramfsRecipe,
    JobInfo,
    JobSpecDoc,
    PatchInfo,
    QemuInfo,
    RevisionInfo,
    TestEntry,
    TreeInfo,
    reproduce_command,
)
from bot.core.signed_urls import is_digest
from bot.host.stores import Runtime
from bot.reporting.page_links import public_base_url
from bot.store.models import Job
from workers.errors import ConfigError

BUILD_FIELDS = ("name", "head_sha", "script", "artifacts", "timeout_s", "kernel", "trusted", "role")
TEST_FIELDS = ("name", "kernel", "commands", "timeout_s", "kunit", "modules", "boot_timeout_s",
               "silence_timeout_s", "max_console_bytes", "network")  # fmt: skip
Entry = TypeVar("Entry", BuildEntry, TestEntry)
STATIC_FIELDS = ("base_sha", "head_sha", "checkpatch", "diff_check", "kernel_doc", "timeout_s")


class UnreadableSpec(Exception):
    """The job's stored spec does not make a reproduction spec (a row older than these fields)."""


def read_job_spec(runtime: Runtime, job_id: int) -> JobSpecDoc | None:
    """The spec of job `job_id`, None when there is no such job. UnreadableSpec when its rows do not make
    one (the message names the job and the field)."""
    with runtime.store.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            return None
        try:
            return _spec_of(runtime, session, job)
        except ValidationError as exc:
            where = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors()[:5])
            raise UnreadableSpec(f"job {job_id}: its stored spec does not make a reproduction spec ({where})") from exc


def _spec_of(runtime: Runtime, session: Session, job: Job) -> JobSpecDoc:
    pipeline = job.pipeline
    revision = pipeline.revision
    tree = revision.change.tree
    checkout = session.scalars(select(Job).where(Job.pipeline_id == pipeline.id, Job.kind == "checkout")).first()
    checkout_spec = checkout.spec if checkout is not None else {}
    problems: list[str] = []
    builds = _builds_of(session, job, problems)
    test, device_class = None, None
    if job.kind == "test":
        built = builds[-1][1].outputs.get("artifacts", {}) if builds else {}
        recipe = InitramfsRecipe(artifacts=tuple(sorted(built)) if isinstance(built, dict) else (),
                                 modules=job.spec.get("modules"))  # fmt: skip
        test = _entry(TestEntry, {**_picked(job.spec, TEST_FIELDS), "initramfs": recipe}, f"test job {job.id}",
                      problems)  # fmt: skip
        device_class = _device_class_info(runtime, str(job.spec.get("device_class", "")))
    return JobSpecDoc(
        job=JobInfo(id=job.id, kind=job.kind, name=job.name, pipeline_id=pipeline.id, state=job.state,  # type: ignore[arg-type]
                    result=job.result),
        tree=TreeInfo(name=tree.name, url=tree.url),
        revision=RevisionInfo(base_ref=revision.base_ref, base_sha=revision.base_sha, head_sha=revision.head_sha,
                              ref=revision.ref, merge=bool(checkout_spec.get("merge", False)),
                              plan_from=checkout_spec.get("plan_from", "head")),
        patches=tuple(_patch(runtime, ref) for ref in revision.patches if isinstance(ref, dict)),
        builds=tuple(entry for entry, _ in builds),
        test=test, device_class=device_class,
        static=_picked(job.spec, STATIC_FIELDS) if job.kind == "static" else None,
        reproduce=reproduce_command(job.id, public_base_url(runtime.config)), problems=tuple(problems),
    )  # fmt: skip


def _builds_of(session: Session, job: Job, problems: list[str]) -> list[tuple[BuildEntry, Job]]:
    """The build jobs a job stands on, in the order they ran: the job itself when it is a build, the build a
    test waited for, and before either the base build a change's kernel build waited for."""
    chain: list[Job] = []
    current: Job | None = job if job.kind == "build" else _parent(session, job)
    while current is not None and current.kind == "build" and len(chain) < 2:
        chain.insert(0, current)
        current = _parent(session, current)
    entries = []
    for index, build in enumerate(chain):
        needs = chain[index - 1].name if index > 0 else None
        fields = {"job_id": build.id, "needs": needs, **_picked(build.spec, BUILD_FIELDS)}
        entry = _entry(BuildEntry, fields, f"build job {build.id}", problems)
        if entry is not None:
            entries.append((entry, build))
    return entries


def _entry(model: type[Entry], fields: dict[str, Any], what: str, problems: list[str]) -> Entry | None:
    """The model of a stored spec, or None with the problem said (a row made before these fields)."""
    try:
        return model(**fields)
    except ValidationError as exc:
        where = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors()[:5])
        problems.append(f"{what}: its stored spec lacks or garbles {where}")
        return None


def _parent(session: Session, job: Job) -> Job | None:
    return session.get(Job, job.depends_on_id) if job.depends_on_id is not None else None


def _picked(spec: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: spec[name] for name in names if name in spec and spec[name] is not None}


def _patch(runtime: Runtime, ref: dict[str, Any]) -> PatchInfo:
    digest = str(ref.get("digest", ""))
    content = None
    if is_digest(digest):
        try:
            content = runtime.artifacts.get_bytes(digest)
        except (OSError, ValueError):
            content = None  # pruned: the spec says so, the CLI names it
    return PatchInfo(name=str(ref.get("name", "")), digest=digest, bytes=len(content) if content is not None else None,
                     content_base64=base64.b64encode(content).decode() if content is not None else None)  # fmt: skip


def _device_class_info(runtime: Runtime, name: str) -> DeviceClassInfo:
    """The class as this server's config has it now: its tags and, for QEMU, how it boots. A board class's
    coordinator and places stay out: a reproduction boots on QEMU."""
    try:
        dc = runtime.config.device_class(name)
    except ConfigError:
        return DeviceClassInfo(name=name or "unknown")  # gone from the config since: tags unknown
    qemu = QemuInfo(**dc.qemu.model_dump()) if dc.lab == "qemu" else None
    return DeviceClassInfo(name=dc.name, lab=dc.lab, tags=dict(dc.tags), qemu=qemu)
