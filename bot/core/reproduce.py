"""`labgate reproduce`: a job's spec as the API serves it, the closest local QEMU class, the jobs to run.

The spec (GET /api/v1/jobs/<id>/spec, or read from the local store) holds what reproducing one job needs
and no secret: the tree, the commits, the patches, the builds the job depends on (their rendered
scripts and kernel recipes), the test's commands and caps, and the device class it ran on. A
reproduction is a pipeline of this machine whose checkout makes the tested commit again (the base and
the same patches, or the same ref) and whose jobs are those builds and that test, drafted here instead
of from the plan: exactly that job, whatever the tree's plan selects today.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bot.core.caps import cap_test
from bot.core.inventory import ClassEntry, Inventory
from bot.core.plans import NAME, Command, Test
from bot.core.progress import JobDraft
from workers.errors import UserError
from workers.spec import KernelBuild, RelativePath, RepositoryUrl

SPEC_VERSION = 1
REPRODUCE_KEY = "reproduce"  # the checkout job's spec entry that makes its pipeline a reproduction
MAX_TEXT = 1 << 20  # a script, a command: no plan needs more
MAX_NAME = 200


class _Doc(BaseModel):
    # A spec may come from another labgate (--server): typed and bounded, unknown fields ignored (a newer
    # server may send more), never echoed into an error (hide_input_in_errors).
    model_config = ConfigDict(frozen=True, extra="ignore", hide_input_in_errors=True)


class JobInfo(_Doc):
    id: int = Field(gt=0)
    kind: Literal["checkout", "static", "build", "test"]
    name: str = Field(max_length=MAX_NAME)
    pipeline_id: int = Field(gt=0)
    state: str = Field(max_length=20)
    result: str | None = Field(None, max_length=20)


class TreeInfo(_Doc):
    # The local tree a reproduction runs as: no part of it may climb (it names mirrors and warm state).
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$", max_length=MAX_NAME)
    url: RepositoryUrl = Field(max_length=4096)


class RevisionInfo(_Doc):
    base_ref: str = Field(max_length=250)
    base_sha: str | None = Field(None, pattern=r"^[0-9a-f]{40,64}$")
    head_sha: str | None = Field(None, pattern=r"^[0-9a-f]{40,64}$")
    ref: str | None = Field(None, max_length=250)
    merge: bool = False
    plan_from: Literal["head", "base"] = "head"


class PatchInfo(_Doc):
    name: str = Field(max_length=MAX_NAME)
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int | None = Field(None, ge=0)
    content_base64: str | None = None  # None: the store no longer holds it (pruned)


class BuildEntry(_Doc):
    """One build job as it was dispatched (workers/spec.py BuildSpec, without the lab's limits)."""

    job_id: int = Field(gt=0)
    name: str = Field(max_length=MAX_NAME)
    role: Literal["change", "base"] = "change"
    head_sha: str = Field(max_length=64)
    script: str = Field(max_length=MAX_TEXT)
    artifacts: tuple[RelativePath, ...] = ()
    timeout_s: int = Field(gt=0)
    kernel: KernelBuild | None = None
    trusted: bool = False
    needs: str | None = Field(None, max_length=MAX_NAME)  # the build it waited for (a change's base build)


class InitramfsRecipe(_Doc):
    """What the lab worker packs around the DUT runner (lab/dut/labgate-run): the build's artifacts,
    read-only under /labgate/artifacts, and the modules tarball unpacked into /lib/modules."""

    runner: str = "lab/dut/labgate-run"
    artifacts: tuple[str, ...] = ()
    modules: str | None = None


class TestEntry(_Doc):
    """One test job as it was dispatched (workers/spec.py TestSpec, without where it ran)."""

    __test__ = False
    name: str = Field(pattern=NAME, max_length=MAX_NAME)
    kernel: str = Field(max_length=1024)  # "debian" (the lab's kernel) or an artifact path of the build
    # The plan's own command model: names as a plan may give them (the runner prints them as KTAP lines).
    commands: tuple[Command, ...] = Field(min_length=1, max_length=1000)
    timeout_s: int = Field(gt=0)
    kunit: bool = False
    modules: RelativePath | None = None
    boot_timeout_s: int | None = Field(None, gt=0)
    silence_timeout_s: int | None = Field(None, gt=0)
    max_console_bytes: int | None = Field(None, gt=0)
    network: bool = False
    initramfs: InitramfsRecipe = InitramfsRecipe()


class QemuInfo(_Doc):
    arch: str = Field(max_length=40)
    machine: str = Field(max_length=100)
    cpu: str = Field(max_length=100)
    memory: str = Field(max_length=40)


class DeviceClassInfo(_Doc):
    name: str = Field(max_length=MAX_NAME)
    lab: Literal["qemu", "labgrid"] = "qemu"
    tags: dict[str, str] = {}
    qemu: QemuInfo | None = None  # how a QEMU class boots; None for a board class

    @property
    def arch(self) -> str | None:
        return self.tags.get("arch") or (self.qemu.arch if self.qemu is not None else None)


class JobSpecDoc(_Doc):
    """What reproducing one job needs, as GET /api/v1/jobs/<id>/spec answers."""

    version: int = SPEC_VERSION
    job: JobInfo
    tree: TreeInfo
    revision: RevisionInfo
    patches: tuple[PatchInfo, ...] = Field((), max_length=1000)
    builds: tuple[BuildEntry, ...] = Field((), max_length=10)  # in the order they ran: a base build first
    test: TestEntry | None = None
    device_class: DeviceClassInfo | None = None
    static: dict[str, Any] | None = None  # a static job's checks (workers/spec.py StaticSpec fields)
    reproduce: str = ""  # the command, with the server's public address
    problems: tuple[str, ...] = Field((), max_length=20)  # parts of the job the store could not describe


class Reproduction(_Doc):
    """What a reproduction's checkout job carries to the control side: the jobs to draft after it."""

    of_job: int = Field(gt=0)
    builds: tuple[BuildEntry, ...]
    test: TestEntry | None = None
    device_class: str | None = None  # the local class chosen (choose_device_class)
    trusted: bool = False  # False: every build on a throwaway copy, none writes warm state (a remote spec)
    note: str = ""


@dataclass(frozen=True)
class ClassChoice:
    name: str
    note: str  # "" when the job's own class runs it; else what was chosen and why


def reproduce_command(job_id: int, public_url: str) -> str:
    """The command a report gives to reproduce one job locally."""
    return f"labgate reproduce {int(job_id)} --server {shlex.quote(public_url.rstrip('/'))}"


def choose_device_class(ran_on: DeviceClassInfo, local: Inventory) -> ClassChoice:
    """The local QEMU class that reproduces a job: its own class when this machine has it as QEMU, else
    the QEMU class of the same arch sharing most of its tags (then fewest tags, then name). UserError when
    this machine has no QEMU class of that arch."""
    qemu = [entry for entry in local if entry.lab == "qemu"]
    same = next((entry for entry in qemu if entry.name == ran_on.name), None)
    if same is not None and ran_on.lab == "qemu":
        return ClassChoice(same.name, "")
    arch = ran_on.arch
    if arch is None:
        raise UserError(f"device class {ran_on.name}: its tags name no arch, so no QEMU class can stand in for it")
    fitting = [entry for entry in qemu if _arch_of(entry) == arch]
    if not fitting:
        names = ", ".join(f"{e.name} ({_arch_of(e) or 'no arch'})" for e in qemu) or "none"
        raise UserError(f"device class {ran_on.name} is arch={arch}; this machine's config has no QEMU class of "
                        f"that arch (QEMU classes: {names}): add one under device_classes:")  # fmt: skip
    best = min(fitting, key=lambda e: (-_shared_tags(e, ran_on), len(e.tags), e.name))
    if ran_on.lab != "qemu":
        why = f"job ran on board class {ran_on.name}; reproduced on the closest QEMU class {best.name} (same "
        why += f"arch={arch})"
    else:
        why = f"QEMU class {ran_on.name} is not in this machine's config; reproduced on {best.name} (same arch={arch})"
    return ClassChoice(best.name, why)


def _arch_of(entry: ClassEntry) -> str | None:
    return entry.tags.get("arch")


def _shared_tags(entry: ClassEntry, ran_on: DeviceClassInfo) -> int:
    return sum(1 for key, value in ran_on.tags.items() if entry.tags.get(key) == value)


def plan_reproduction(doc: JobSpecDoc, local: Inventory, *, trusted: bool) -> Reproduction:
    """The jobs that reproduce the spec's job on this machine. UserError for a job that cannot be
    reproduced (a checkout or static job, a test whose build is not in the spec)."""
    where = f"job {doc.job.id} ({doc.job.kind} {doc.job.name})"
    if doc.job.kind not in ("build", "test"):
        raise UserError(f"{where}: labgate reproduce runs build and test jobs; give one of this pipeline's")
    if doc.problems:
        raise UserError(f"{where}: " + "; ".join(doc.problems[:5]))
    if not doc.builds:
        raise UserError(f"{where}: the spec names no build to run")
    note, device_class = "", None
    if doc.job.kind == "test":
        if doc.test is None or doc.device_class is None:
            raise UserError(f"{where}: the spec holds no test or no device class")
        choice = choose_device_class(doc.device_class, local)
        note, device_class = choice.note, choice.name
    return Reproduction(of_job=doc.job.id, builds=doc.builds, test=doc.test if doc.job.kind == "test" else None,
                        device_class=device_class, trusted=trusted, note=note)  # fmt: skip


def reproduction_drafts(reproduction: Reproduction, *, tested_sha: str, base_sha: str | None,
                        inventory: Inventory) -> tuple[list[JobDraft], list[str]]:  # fmt: skip
    """The jobs of a reproduction, after its checkout made the tested commit (`tested_sha`, on `base_sha`),
    and the pipeline's notes. The builds run their recorded scripts at the new commits; the test runs its
    recorded commands on the chosen class, under this machine's caps."""
    drafts, notes = [], [f"reproduction of job {reproduction.of_job}"]
    if reproduction.note:
        notes.append(reproduction.note)
    names = {build.name for build in reproduction.builds}
    for build in reproduction.builds:
        commit = base_sha if build.role == "base" else tested_sha
        if commit is None:
            raise UserError(f"build {build.name}: a base build, but the checkout found no base commit")
        spec: dict[str, Any] = {"name": build.name, "head_sha": commit, "script": build.script,
                                "artifacts": list(build.artifacts), "timeout_s": build.timeout_s}  # fmt: skip
        if build.kernel is not None:
            spec |= {"kernel": build.kernel.model_dump(), "role": build.role,
                     # A base build writes warm state only as the normal path would: trusted, local spec.
                     "trusted": reproduction.trusted and (build.trusted or build.role == "base")}  # fmt: skip
        needs = build.needs if build.needs in names else None
        drafts.append(JobDraft(kind="build", name=build.name, device_class=None, needs=needs, spec=spec))
    test = reproduction.test
    if test is not None and reproduction.device_class is not None:
        drafts.append(_test_draft(test, reproduction.builds[-1].name, inventory[reproduction.device_class], notes))
    return drafts, notes


def _test_draft(test: TestEntry, build_name: str, entry: ClassEntry, notes: list[str]) -> JobDraft:
    """The test on `entry` with this machine's caps (bot/core/caps.py), the recorded ones never lifted."""
    # cap_test reads the name, timeout and network of a plan's test: the recorded ones, validated above.
    as_planned = Test.model_construct(name=test.name, build=build_name, device=dict(entry.tags),
                                      commands=test.commands, timeout=test.timeout_s, network=test.network)
    capped = cap_test(as_planned, class_name=entry.name, caps=entry.caps, class_network=entry.network,
                      tier="hardware", network_tiers=("hardware",) if test.network else ())  # fmt: skip
    notes.extend(capped.notes)
    spec: dict[str, Any] = {
        "name": test.name, "kernel": test.kernel, "commands": [c.model_dump() for c in test.commands],
        "kunit": test.kunit, "modules": test.modules, "timeout_s": capped.timeout_s,
        "boot_timeout_s": _lower(capped.boot_timeout_s, test.boot_timeout_s),
        "silence_timeout_s": _lower(capped.silence_timeout_s, test.silence_timeout_s),
        "max_console_bytes": _lower(capped.max_console_bytes, test.max_console_bytes), "network": capped.network,
    }  # fmt: skip
    return JobDraft(kind="test", name=f"{entry.name} {test.name}", device_class=entry.name, needs=build_name,
                    spec=spec)  # fmt: skip


def _lower(cap: int, recorded: int | None) -> int:
    return cap if recorded is None else min(cap, recorded)


def patches_of(doc: JobSpecDoc) -> Sequence[PatchInfo]:
    """The spec's patches; UserError naming any the server no longer holds."""
    missing = [patch.name for patch in doc.patches if patch.content_base64 is None]
    if missing:
        raise UserError(f"job {doc.job.id}: patches {', '.join(missing)} are no longer stored (pruned by the "
                        "retention policy): the change cannot be made again")  # fmt: skip
    return doc.patches
