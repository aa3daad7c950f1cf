"""JobSpec and JobResult: the only contract between the bot and the workers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

JobKind = Literal["checkout", "build", "test"]
Result = Literal["pass", "fail", "skip", "incomplete"]

# Celery task names by job kind: the bot sends by name and never imports workers.tasks.
TASK_NAMES: dict[str, str] = {
    "checkout": "workers.run_checkout",
    "build": "workers.run_build",
    "test": "workers.run_test",
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PatchRef(_Frozen):
    name: str
    digest: str  # in the artifact store


class CheckoutSpec(_Frozen):
    base_ref: str
    ref: str | None = None  # test this ref instead of applying patches
    patches: tuple[PatchRef, ...] = ()
    plan_path: str = ".labgate/plan.yaml"
    # "base": untrusted submitter, the plan comes from the base, never from the change.
    plan_from: Literal["head", "base"] = "head"
    merge: bool = False  # test `ref` merged onto the base's current head


class ArtifactRef(_Frozen):
    digest: str
    mode: int = 0o644


class BuildSpec(_Frozen):
    name: str
    head_sha: str
    script: str  # sh script run at the worktree root
    artifacts: tuple[str, ...]
    timeout_s: int


class QemuSpec(_Frozen):
    machine: str = "q35"
    cpu: str = "qemu64"
    memory: str = "512M"


class TestCommand(_Frozen):
    name: str
    run: str


class TestSpec(_Frozen):
    __test__ = False  # not a pytest class
    name: str
    device_class: str
    qemu: QemuSpec
    kernel: str  # "debian" or the path of a build artifact
    commands: tuple[TestCommand, ...]
    artifacts: dict[str, ArtifactRef]
    timeout_s: int


class JobSpec(_Frozen):
    job_id: int
    pipeline_id: int
    kind: JobKind
    tree_name: str
    tree_url: str
    max_log_bytes: int
    checkout: CheckoutSpec | None = None
    build: BuildSpec | None = None
    test: TestSpec | None = None


class TestCase(_Frozen):
    __test__ = False
    path: str
    status: Result
    directive: str | None = None
    reason: str = ""
    diagnostics: str = ""


class JobResult(_Frozen):
    job_id: int
    delivery: int  # which delivery of the task message produced this (1 = first)
    result: Result | None  # None when error_code says our side or the input failed
    error_code: str | None = None  # "user-error", "infra-error", "worker-lost", "timeout"
    error_message: str | None = None
    log_digest: str | None = None
    command_s: float = 0.0  # time inside build or boot commands, the part that is not overhead
    outputs: dict[str, object] = {}
    tests: tuple[TestCase, ...] = ()
