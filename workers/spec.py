"""JobSpec and JobResult: the only contract between the bot and the workers."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

JobKind = Literal["checkout", "static", "build", "test"]
Result = Literal["pass", "fail", "skip", "incomplete"]

# Celery task names by job kind: the bot sends by name and never imports workers.tasks.
TASK_NAMES: dict[str, str] = {
    "checkout": "workers.run_checkout",
    "static": "workers.run_static",
    "build": "workers.run_build",
    "test": "workers.run_test",
}


class _Frozen(BaseModel):
    # hide_input_in_errors: a refused value (a URL with a token in it) must not ride into a log.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


def unsafe_path_reason(path: str) -> str | None:
    """Why a path a change or a worker named cannot be used below a job's directory; None if it can."""
    if not path:
        return "is empty"
    if any(c in path for c in "\0\n\r"):
        return "holds a NUL or line break"
    if path.startswith("/"):
        return "is absolute"
    parts = path.split("/")
    if ".." in parts:
        return "has a '..' component"
    if any(part in ("", ".") for part in parts):
        return "has an empty or '.' component"
    return None


def _refusing(reason_of: Callable[[str], str | None], what: str) -> AfterValidator:
    """A pydantic validator that refuses a value with the reason `reason_of` gives."""

    def check(value: str) -> str:
        reason = reason_of(value)
        if reason:
            raise ValueError(f"{what} {reason}")
        return value

    return AfterValidator(check)


# A path below a job's directory: never absolute, never climbing out.
RelativePath = Annotated[str, _refusing(unsafe_path_reason, "path")]

_SCP_LIKE = re.compile(r"^(?P<user>[^@/:]+)@[^/:]+:")  # git@host:path


def url_credentials_reason(url: str) -> str | None:
    """Why a repository URL must be refused for carrying a secret; None if it carries none.

    A token in a URL ends up in argv, logs, `.git/config` and every error message git
    prints. An http(s) URL may carry no user at all (a token can be the user name); ssh
    URLs may name a user (git@host) but never a password.
    """
    scp = _SCP_LIKE.match(url)
    if scp and "://" not in url:
        return None
    parsed = urlsplit(url)
    if "@" not in parsed.netloc:
        return None
    userinfo = parsed.netloc.rsplit("@", 1)[0]
    if parsed.scheme in ("http", "https", "git"):
        return "carries credentials (user or token before '@'); give them to labgate another way"
    if ":" in userinfo:
        return "carries a password; use an ssh key or labgate's per-job credential"
    return None


RepositoryUrl = Annotated[str, _refusing(url_credentials_reason, "repository URL")]


class PatchRef(_Frozen):
    name: str
    digest: str  # in the artifact store


def branch_name_reason(name: str) -> str | None:
    """Why a branch name cannot be put after refs/heads/ on git's command line; None if it can."""
    if not name or name.startswith(("-", "/")) or name.endswith(("/", ".lock")) or ".." in name or "//" in name:
        return "is not a branch name git takes"
    if any(c.isspace() or c in "~^:?*[\\\x7f" or ord(c) < 32 for c in name) or "@{" in name:
        return "holds a character git refuses in a branch name"
    return None


BranchName = Annotated[str, _refusing(branch_name_reason, "branch")]


class CheckoutSpec(_Frozen):
    base_ref: str
    # Set for a base named by a commit (a series' base-commit: trailer): that commit must be on one of
    # these branches of the tree (refs/heads/*), since the mirror also holds forks' refs (refs/pull/*).
    base_branches: tuple[BranchName, ...] = ()
    ref: str | None = None  # test this ref instead of applying patches
    patches: tuple[PatchRef, ...] = ()
    plan_path: str = ".labgate/plan.yaml"
    # "base": untrusted submitter, the plan comes from the base, never from the change.
    plan_from: Literal["head", "base"] = "head"
    merge: bool = False  # test `ref` merged onto the base's current head
    # A bisection (bot/pipelines/bisection.py): list the first-parent commits base..ref with their authors in the
    # outputs ("commits": [[sha, "Name <mail>"]], oldest first); and test `ref` with this commit of its
    # first-parent history reverted on it (a revert that does not apply is the tree's error).
    list_commits: bool = False
    revert_sha: Annotated[str, Field(pattern=r"^([0-9a-f]{40}|[0-9a-f]{64})$")] | None = None


class ArtifactRef(_Frozen):
    digest: str
    mode: int = 0o644


class BuildLimits(_Frozen):
    """Lab caps on one build; the operator's config sets them, never the plan."""

    memory_bytes: int = Field(8 << 30, gt=0)  # all processes of the build together
    max_processes: int = Field(2048, gt=0)  # processes and threads
    disk_bytes: int = Field(20 << 30, gt=0)  # source tree + build dir
    tmp_bytes: int = Field(256 << 20, gt=0)  # the sandbox's /tmp (host RAM)
    max_artifact_bytes: int = Field(256 << 20, gt=0)
    max_artifacts_bytes: int = Field(1 << 30, gt=0)


class KernelBuild(_Frozen):
    """What a build worker must know of a plan's kernel recipe beyond its script (which the control side
    renders, bot/core/plans.py): it builds in warm state (workers/warm.py) keyed by warm_key, through the
    ccache of (tree, arch, toolchain) (never shared between trees: trust is per tree), with the compiler
    wrapper that keeps every unit's warnings."""

    arch: str = Field(pattern=r"^[a-z0-9_]+$")  # the kernel's ARCH
    toolchain: Literal["gcc", "clang"] = "gcc"
    # Hex digest of (tree, arch, toolchain, config recipe): names the warm build dir. Equal keys build alike.
    warm_key: str = Field(pattern=r"^[0-9a-f]{16,64}$")


class BuildSpec(_Frozen):
    name: str
    head_sha: str
    script: str  # sh script run at the worktree root
    artifacts: tuple[RelativePath, ...]
    timeout_s: int
    limits: BuildLimits = BuildLimits()
    # Workers on other hosts: the tested commits as a git bundle (relative to the base) the checkout
    # worker uploaded; the build worker fetches it into its own mirror. None: the mirror is shared.
    bundle_digest: str | None = None
    # Set for a plan's kernel recipe. The script then reads $LABGATE_CC (a command prefix taking the
    # compiler as its first word), and the worker sets KBUILD_BUILD_{TIMESTAMP,USER,HOST,VERSION}.
    kernel: KernelBuild | None = None
    # May write warm state (warm source, build dir, shared ccache): a trusted submitter's change, or a
    # base build. False: the build runs on a throwaway copy and reads the shared ccache read-only.
    trusted: bool = False
    # "base": the build of the change's base commit that the change's build is compared with (its
    # warnings, its binaries); shared by every change on that base. "change": the change's own build.
    role: Literal["change", "base"] = "change"


# Build outputs (JobResult.outputs) besides "artifacts" and "diagnostics", for kernel builds:
#   "warnings": [{"file", "line", "col", "level" (warning|error), "flag" ("-Wunused-variable" or ""),
#                 "text"}] of every unit of the build dir, also those not recompiled by this build (the
#                 ledger of workers/kbuild.py), capped at MAX_LEDGER_WARNINGS, deduplicated; "file" is
#                 relative to the tree, or "<build>/..." for a file the build generated; "warnings_complete": bool
#   "recompiled": [object paths relative to the build dir] that this build compiled (capped at 1000)
#   "binary_digest": sha256 over vmlinux, every module and every collected artifact: equal digests of a
#                    change's and its base's build mean the change did not alter what boots (None: failed)
#   "warm": {"mode": "cold" | "warm" | "copy", "prepare_s", "make_s", "collect_s": float, "source": "kept" |
#            "synced" | "exported", "source_changed": int (files; -1 when exported whole), "held_bytes",
#            "max_bytes": int (the worker's warm state after this build, and its cap)}
MAX_LEDGER_WARNINGS = 5000


class StaticSpec(_Frozen):
    """The static stage of a change (workers/static.py): checks that read the patches, never build them.
    Run before any build; its tools come from the base (never the change) and run in the sandbox."""

    base_sha: str
    head_sha: str
    checkpatch: Literal["off", "on", "strict"] = "on"  # "on": only when the base has scripts/checkpatch.pl
    diff_check: bool = True  # `git diff --check` of base..head
    kernel_doc: bool = True  # scripts/kernel-doc -none on changed .c/.h files, when the base has it
    timeout_s: int = Field(300, gt=0)
    limits: BuildLimits = BuildLimits()
    bundle_digest: str | None = None  # as BuildSpec's


# Static outputs: "annotations": [{"file", "line", "level" (error|warning), "source" (checkpatch|diff-check|
# kernel-doc), "check" (e.g. "CODE_INDENT"), "text", "commit" (sha or "")}], capped at 500 ("file" "" and
# "line" 0: the commit message; "line" 0 alone: the file as a whole); "annotations_complete": bool (False:
# more were found than kept). JobResult.tests has one TestCase per check run ("static/checkpatch/<n>-
# <subject slug>", "static/diff-check", "static/kernel-doc"): `fail` on an error, `pass` with the warnings
# counted in `reason` otherwise, `skip` with the reason when the base has no such tool. kernel-doc reports
# only what the base's copies of the changed files do not have, all as warnings; a check a cap stopped fails.


class QemuSpec(_Frozen):
    arch: Literal["x86_64", "arm64"] = "x86_64"  # qemu-system-x86_64 or qemu-system-aarch64
    machine: str = "q35"
    cpu: str = "qemu64"
    memory: str = "512M"


class LabgridTarget(_Frozen):
    """Where a board test runs: a place of this coordinator carrying these tags, driven by this
    labgrid environment (the template's text: workers hold no config file)."""

    coordinator: str  # host:port of labgrid's gRPC coordinator
    place_tags: dict[str, str]
    environment: str  # Jinja2 labgrid environment; `place` is the reserved place's name


class TestCommand(_Frozen):
    __test__ = False  # not a pytest class
    name: str
    run: str
    root: bool = False  # runs as root on the DUT: its results are not forge-proof


# The lab's caps on one test job when the config says nothing (bot/host/config.py Caps uses them too).
DEFAULT_MAX_JOB_S = 900
DEFAULT_MAX_BOOT_S = 300
DEFAULT_MAX_SILENCE_S = 300
DEFAULT_MAX_CONSOLE_BYTES = 16 * 1024 * 1024


class TestSpec(_Frozen):
    """One boot and its commands. The caps are the lab's (config `caps:` and the device class's own),
    already clamped on the control side: a worker enforces them as given, the plan never set them."""

    __test__ = False  # not a pytest class
    name: str
    device_class: str
    qemu: QemuSpec
    kernel: str  # "debian" or the path of a build artifact
    commands: tuple[TestCommand, ...]
    artifacts: dict[RelativePath, ArtifactRef]
    timeout_s: int  # the whole job: power-on to the runner's end marker
    kunit: bool = False  # relay in-kernel KUnit results from debugfs after the commands
    # An artifact of the build (a modules tarball holding lib/modules/<release>/...) unpacked into the
    # initramfs, so the DUT can modprobe the build's modules. None: no modules.
    modules: RelativePath | None = None
    boot_timeout_s: int = Field(DEFAULT_MAX_BOOT_S, gt=0)  # power-on to the runner's first byte (at most timeout_s)
    silence_timeout_s: int = Field(DEFAULT_MAX_SILENCE_S, gt=0)  # no byte on the console nor the runner's port
    max_console_bytes: int = Field(DEFAULT_MAX_CONSOLE_BYTES, gt=0)  # the kernel console kept; more stops the job
    network: bool = False  # the DUT gets a network: the class allows it and the tree grants it to the tier
    labgrid: LabgridTarget | None = None  # a board class's places; None: local QEMU
    # Places where earlier attempts of this job ended `incomplete` through the place's fault: the job
    # runs on another place of the class when one can take it within the wait cap.
    avoid_places: tuple[str, ...] = ()
    # A health check of exactly this place, which labgate holds offline (locked as OFFLINE_USER, lab/places.py):
    # it boots there without a reservation; a pass hands the place back to service, a failure keeps it out.
    health_check_place: str | None = None
    # Non-empty when the control side has seen this device class boot a kernel to the runner (its
    # evidence, said in the report): a change's kernel that then never reaches the runner broke boot
    # (`fail` "boot failed"); with no evidence the boot is `incomplete` ("boot-unproven").
    boot_evidence: str = ""


class Exchange(_Frozen):
    """How a worker on another host moves this one job's blobs (bot/core/signed_urls.py): short-lived
    grants the control side signed for this job only, never a key. URL: f"{base_url}/{digest}?{query}"."""

    base_url: str  # the control side's exchange route, e.g. http://control:8080/exchange
    downloads: dict[str, str]  # digest -> the query that lets this job GET it (and nothing else)
    upload_query: str  # lets this job PUT blobs of at most upload_max_bytes each, stored by their sha256
    upload_max_bytes: int = Field(gt=0)


class JobSpec(_Frozen):
    job_id: int
    pipeline_id: int
    kind: JobKind
    # Proves a result comes from the worker that was given this job (bot checks it).
    result_token: str = ""
    tree_name: str
    tree_url: RepositoryUrl
    max_log_bytes: int
    checkout: CheckoutSpec | None = None
    static: StaticSpec | None = None
    build: BuildSpec | None = None
    test: TestSpec | None = None
    # Set when the control side serves blobs over HTTP: the worker fetches its inputs and uploads
    # its log and outputs through it. None: workers share the control side's artifact store.
    exchange: Exchange | None = None


class TestCase(_Frozen):
    __test__ = False
    path: str
    status: Result
    directive: str | None = None
    reason: str = ""
    diagnostics: str = ""
    caveat: str = ""  # e.g. "ran as root: not forge-proof"


# Why a test job is `incomplete` (JobResult.error_code): the lab's side failed, never the change.
INCOMPLETE_NO_CONSOLE = "no-console-output"  # the target printed nothing at all
INCOMPLETE_PLACE_UNAVAILABLE = "place-unavailable"  # no place was granted within the wait cap
INCOMPLETE_QEMU_CRASHED = "qemu-crashed"  # QEMU exited on its own, not by the guest's power-off
INCOMPLETE_POWER = "power-driver-error"  # the place's power, staging or console driver failed
INCOMPLETE_FRAMING = "ktap-framing"  # the runner's own framing broke (its port, not a command's output)
INCOMPLETE_BOOT_UNPROVEN = "boot-unproven"  # never reached the runner on a class not yet seen booting
INCOMPLETE_LAB_KERNEL = "boot-failed"  # the lab's own kernel never reached the runner
INCOMPLETE_CODES = (INCOMPLETE_NO_CONSOLE, INCOMPLETE_PLACE_UNAVAILABLE, INCOMPLETE_QEMU_CRASHED, INCOMPLETE_POWER,
                    INCOMPLETE_FRAMING, INCOMPLETE_BOOT_UNPROVEN, INCOMPLETE_LAB_KERNEL)  # fmt: skip
# Codes that count against the place (or QEMU slot) that ran the job: 3 in a row take a place offline.
# A place nobody could get is not a fault of any one place.
PLACE_FAULT_CODES = tuple(code for code in INCOMPLETE_CODES if code != INCOMPLETE_PLACE_UNAVAILABLE)


class JobResult(_Frozen):
    job_id: int
    result_token: str = ""  # copied from the JobSpec
    delivery: int  # which delivery of the task message produced this (1 = first)
    result: Result | None  # None when error_code says our side or the input failed
    error_code: str | None = None  # "user-error", "infra-error", "worker-lost", "timeout"
    error_message: str | None = None
    log_digest: str | None = None
    command_s: float = 0.0  # time inside build or boot commands, the part that is not overhead
    outputs: dict[str, object] = {}
    tests: tuple[TestCase, ...] = ()


# The checkout worker reads one file of the tree at a series' base (its MAINTAINERS) for the control side.
READ_BASE_FILE_TASK = "workers.read_base_file"
BASE_FILE_READ_TASK = "bot.base_file_read"  # the answer, on the results queue


class BaseFileRequest(_Frozen):
    request_id: str  # the control side's key for what asked
    token: str  # proves the answer comes from the worker given this request (bot checks its hash)
    tree_name: str
    tree_url: RepositoryUrl
    base_ref: str
    base_branches: tuple[str, ...] = ()  # a base named by a commit must be on one of them
    path: RelativePath
    max_bytes: int = Field(gt=0)


class BaseFileAnswer(_Frozen):
    request_id: str
    token: str
    base_sha: str | None = None
    digest: str | None = None  # the file's bytes in the artifact store; None: not there, or not readable
    problem: str | None = None  # why there is no file to read (no such base, over the cap, not a file)
