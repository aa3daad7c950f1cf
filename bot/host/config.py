"""labgate.yaml: pydantic models, loading with key-path errors, JSON Schema."""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bot.core.caps import TestCaps
from bot.core.inventory import ClassEntry, Inventory
from bot.core.links import is_sha256_hex
from bot.core.plans import PlanError, parse_plan
from bot.core.progress import check_plan_devices
from bot.core.schema import json_schema, render_json_schema
from bot.core.trust import TrustPolicy
from bot.oidc.settings import OidcSettings
from workers.checkout import mirror_path
from workers.errors import ConfigError
from workers.slots import DEFAULT_BUILD_UIDS, DEFAULT_QEMU_UIDS, UidRange
from workers.spec import (
    DEFAULT_MAX_BOOT_S,
    DEFAULT_MAX_CONSOLE_BYTES,
    DEFAULT_MAX_JOB_S,
    DEFAULT_MAX_SILENCE_S,
    BuildLimits,
    RepositoryUrl,
    unsafe_path_reason,
)

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"


class _Strict(BaseModel):
    # Unknown keys are typos far more often than forward compatibility: reject them.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class Caps(_Strict):
    """Limits the lab enforces whatever a plan asks for."""

    max_build_s: int = Field(1800, gt=0, description="wall-time cap of one build job")
    max_job_s: int = Field(DEFAULT_MAX_JOB_S, gt=0, description="wall-time cap of one test job (boot + suites); "
                           "a plan's longer test timeout is cut to it, and the report says so")  # fmt: skip
    max_boot_s: int = Field(DEFAULT_MAX_BOOT_S, gt=0, description="power-on to the DUT runner's first byte "
                            "(at most max_job_s)")  # fmt: skip
    max_console_silence_s: int = Field(DEFAULT_MAX_SILENCE_S, gt=0, description="a test job with no byte on the "
                                       "console nor the runner's port for this long is stopped")  # fmt: skip
    max_console_bytes: int = Field(DEFAULT_MAX_CONSOLE_BYTES, gt=0, description="kernel console kept per test "
                                   "job; more output stops it")  # fmt: skip
    max_log_bytes: int = Field(16 * 1024 * 1024, gt=0, description="largest log kept per job; more output stops it")
    max_build_memory_bytes: int = Field(8 << 30, gt=0, description="memory of all a build's processes together")
    max_build_processes: int = Field(2048, gt=0, description="processes and threads of one build")
    max_build_disk_bytes: int = Field(20 << 30, gt=0, description="bytes a build may write (source + build dir)")
    max_build_tmp_bytes: int = Field(256 << 20, gt=0, description="size of the build's /tmp (a tmpfs in RAM)")
    max_artifact_bytes: int = Field(256 << 20, gt=0, description="largest single artifact")
    max_artifacts_bytes: int = Field(1 << 30, gt=0, description="all artifacts of one build together")
    max_patch_bytes: int = Field(8 << 20, gt=0, description="largest patch or mbox accepted; refused before storing")

    def build_limits(self) -> BuildLimits:
        return BuildLimits(
            memory_bytes=self.max_build_memory_bytes, max_processes=self.max_build_processes,
            disk_bytes=self.max_build_disk_bytes, tmp_bytes=self.max_build_tmp_bytes,
            max_artifact_bytes=self.max_artifact_bytes, max_artifacts_bytes=self.max_artifacts_bytes,
        )  # fmt: skip

    def test_caps(self, override: DeviceCaps | None = None) -> TestCaps:
        """The caps on a test job, with a device class's own values in place of these where it sets them."""
        mine = override or DeviceCaps()
        return TestCaps(
            max_job_s=mine.max_job_s or self.max_job_s, max_boot_s=mine.max_boot_s or self.max_boot_s,
            max_silence_s=mine.max_console_silence_s or self.max_console_silence_s,
            max_console_bytes=mine.max_console_bytes or self.max_console_bytes,
        )  # fmt: skip


class DeviceCaps(_Strict):
    """A device class's own test-job caps, in place of the global `caps:` ones (a slow board boots longer)."""

    max_job_s: int | None = Field(None, gt=0)
    max_boot_s: int | None = Field(None, gt=0)
    max_console_silence_s: int | None = Field(None, gt=0)
    max_console_bytes: int | None = Field(None, gt=0)


class Scheduling(_Strict):
    """How test jobs wait for their device class (bot/pipelines/scheduler.py): a small window of messages
    in the broker per class, the rest in the store; back-pressure and quotas per submitter."""

    window_margin: int = Field(0, ge=0, le=64, description="messages a class holds in the broker beyond its "
                               "capacity (the jobs its workers run): each is a job that waits there, behind "
                               "nothing newer, not in the store's fair order; raise it only for classes whose "
                               "jobs take seconds, where a worker idles while its result is recorded")  # fmt: skip
    max_waiting_per_class: int = Field(5000, gt=0, description="jobs waiting for one class; more are not "
                                       "taken (`skip` with the reason; /retest when it has drained)")  # fmt: skip
    submitter_jobs_in_flight: int = Field(4, gt=0, description="test jobs of one approved or CI-job submitter "
                                          "queued or running at once, over all classes")  # fmt: skip
    submitter_device_minutes_per_day: int = Field(600, gt=0, description="device time one approved or "
                                                  "CI-job submitter's test jobs may take in 24 hours; then "
                                                  "they wait")  # fmt: skip
    top_up_interval_s: int = Field(30, gt=0, description="how often `labgate up` refills every class's window "
                                   "(a lost wake-up never strands waiting jobs)")  # fmt: skip
    health_recheck_interval_s: int = Field(1800, gt=0, description="a place whose health check failed stays "
                                           "offline and is checked again after this long (a fixed board comes "
                                           "back without an operator)")  # fmt: skip


class Retries(_Strict):
    """Forge events and reports are retried on forge and infrastructure errors (5xx, rate limits,
    the database or broker away), with exponential backoff and full jitter; other errors are not."""

    attempts: int = Field(10, ge=0, le=100, description="retries after the first try; then the task is recorded failed")
    base_s: float = Field(2.0, gt=0, description="first wait; each retry waits up to twice the one before")
    max_s: float = Field(600.0, gt=0, description="longest single wait")


class ArtifactRetention(_Strict):
    """How long builds' artifacts, logs and patches stay in the artifact store (bot/pipelines/retention.py):
    a periodic task deletes the blobs no kept pipeline names."""

    keep_days: int = Field(30, gt=0, description="a pipeline finished this many days ago or less keeps its blobs")
    keep_last_per_tree: int = Field(20, ge=0, description="the newest pipelines of each tree that keep their "
                                    "blobs whatever their age")  # fmt: skip
    grace_s: int = Field(86400, ge=600, description="a blob written or asked for this recently is never deleted: "
                         "a worker uploads before its result names the blob (longer than the longest job)")  # fmt: skip
    prune_interval_s: int = Field(3600, gt=0, description="how often `labgate up` prunes")
    prune: bool = Field(True, description="false: keep everything (no periodic prune)")


class Triage(_Strict):
    """How a change's failures are judged against its base (bot/core/triage.py, bot/pipelines/triage_runs.py):
    re-runs on the change and on the base, the decision rule's false-alarm bound, and the caps on extra runs."""

    enabled: bool = Field(True, description="false: a change's failures are reported as they came, with no re-runs "
                          "or base runs (a lab with no time to spare; every failure then fails the check)")  # fmt: skip
    reruns: int = Field(3, ge=0, le=20, description="re-runs of a `new` candidate, each on the change and on the "
                        "base, interleaved on the same device class (k)")  # fmt: skip
    alpha: float = Field(0.02, gt=0, lt=0.5, description="the decision rule's false-alarm bound: a test that is no "
                         "worse with the change is called `new` with at most this probability")  # fmt: skip
    history: int = Field(20, ge=0, le=500, description="base-branch results on the same class and config read as "
                         "the test's history (newest first)")  # fmt: skip
    metric_runs: int = Field(5, ge=2, le=50, description="runs on the change and on the base of a test that "
                             "reports metrics (m)")  # fmt: skip
    min_effect: float = Field(0.05, ge=0, le=10, description="smallest relative change of a metric's median "
                              "reported as a regression (0.05: 5%)")  # fmt: skip
    max_extra_runs: int = Field(24, ge=0, le=1000, description="extra test runs (re-runs and base runs) one "
                                "pipeline may ask for; a failure whose runs this cut short is not `new`")  # fmt: skip
    bisect_max_steps: int = Field(8, ge=1, le=64, description="bisection steps before it gives up")
    bisect_runs: int = Field(2, ge=1, le=10, description="runs of each bisection step (a flake guard)")


class KnownIssueConfig(_Strict):
    """A known issue kept in config (read-only to `labgate known-issue`): matching failures are reported as
    it and do not fail the check. Scope keys left out match anything."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}$", description="a name people quote")
    link: str = Field("", description="where the issue is tracked")
    owner: str = Field("", description="who is fixing it")
    scope: dict[str, str] = Field(default_factory=dict, description="tree, branch, arch, device_class, config")
    test: str = Field("", description="test path glob (<test job>/<test path>, e.g. unit/math.*)")
    log: str = Field("", description="regular expression searched in the failure's log lines")
    crash: str = Field("", description="crash title (lab/console.py), exactly")
    expires: date = Field(description="the last day it matches")

    @field_validator("scope")
    @classmethod
    def _known_scope_keys(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - {"tree", "branch", "arch", "device_class", "config"})
        if unknown:
            raise ValueError(f"unknown scope keys: {', '.join(unknown)} (tree, branch, arch, device_class, config)")
        return value


class Sandbox(_Strict):
    """Unprivileged uids the sandboxes run as: one per concurrent job slot (setup creates them)."""

    build_uids: str = Field(DEFAULT_BUILD_UIDS, pattern=r"^[0-9]+:[0-9]+$",
                            description="FIRST:COUNT uids for builds, one per concurrent build")
    qemu_uids: str = Field(DEFAULT_QEMU_UIDS, pattern=r"^[0-9]+:[0-9]+$",
                           description="FIRST:COUNT uids for QEMU, one per concurrent boot")

    @field_validator("build_uids", "qemu_uids")
    @classmethod
    def _valid_range(cls, value: str) -> str:
        try:
            UidRange.parse(value, "uid range")
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return value


class QemuTarget(_Strict):
    """How a QEMU device class boots. An arm64 class: `arch: arm64`, `machine: virt`, `cpu: cortex-a57`
    (TCG; `max` boots about 4 times slower, emulating pointer authentication)."""

    arch: Literal["x86_64", "arm64"] = Field("x86_64", description="the guest's arch: qemu-system-x86_64 or "
                                             "qemu-system-aarch64, its console and the runner's port")  # fmt: skip
    machine: str = "q35"
    cpu: str = "qemu64"
    memory: str = "512M"

    @model_validator(mode="before")
    @classmethod
    def _arm64_defaults(cls, data: Any) -> Any:
        # `qemu: {arch: arm64}` alone is a working class: x86's machine and cpu would not start.
        if isinstance(data, dict) and data.get("arch") == "arm64":
            data = {"machine": "virt", "cpu": "cortex-a57", **data}
        return data

    @model_validator(mode="after")
    def _arm64_on_virt(self) -> QemuTarget:
        # The runner's port on arm64 is a PCI 16550 on virt's PCIe (lab/arch.py); q35 and pc are x86 machines.
        if self.arch == "arm64" and self.machine != "virt":
            raise ValueError(f"an arm64 class boots on `machine: virt`, not {self.machine!r}")
        return self


class LabgridPlaces(_Strict):
    """Where a board device class lives: places of a labgrid coordinator, picked by their tags, and the
    labgrid environment that drives them (power, console, image staging)."""

    coordinator: str = Field(pattern=r"^[A-Za-z0-9.\-]+:[0-9]{1,5}$|^\[[0-9A-Fa-f:]+\]:[0-9]{1,5}$",
                             description="the coordinator's gRPC address, host:port (labgrid >= 24)")
    place_tags: dict[str, str] = Field(min_length=1, description="k=v tags a place must carry (labgrid-client "
                                       "set-tags) to serve this class; reservations ask for exactly these")  # fmt: skip
    environment: Path = Field(description="labgrid environment template (Jinja2) for these places; relative "
                              "to this config file")  # fmt: skip


class DeviceClass(_Strict):
    """A set of interchangeable targets, matched to tests by k=v tags (and memory), and where they live:
    local QEMU, or the places of a labgrid coordinator."""

    name: str = Field(pattern=NAME_PATTERN)
    tags: dict[str, str] = Field(description="k=v tags a test's requirements match by subset (arch, platform, "
                                 "soc, features)")  # fmt: skip
    memory_mb: int = Field(512, gt=0, description="memory of one target; a test asking for more does not match")
    capacity: int = Field(1, gt=0, description="targets of this class that run jobs at once (places, QEMU slots)")
    lab: Literal["qemu", "labgrid"] = "qemu"
    qemu: QemuTarget = QemuTarget()
    labgrid: LabgridPlaces | None = Field(None, description="the places of a `lab: labgrid` class")
    network: bool = Field(False, description="its targets may be given a network, for tests that ask, where the "
                          "tree grants it to the change's tier (trees[].lab_grants.network)")  # fmt: skip
    caps: DeviceCaps = Field(DeviceCaps(), description="this class's own test-job caps, in place of `caps:`")

    @model_validator(mode="after")
    def _labgrid_has_places(self) -> DeviceClass:
        if (self.lab == "labgrid") != (self.labgrid is not None):
            raise ValueError("a `lab: labgrid` class needs a `labgrid:` section (coordinator, place_tags, "
                             "environment), and only such a class may have one")  # fmt: skip
        return self


class TreeGitHub(_Strict):
    """How a tree lives on GitHub: GitHub's words only (trust, staging and drafts are the tree's own)."""

    repo: str = Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", description="owner/name")


GitLabAccessLevel = Literal["guest", "planner", "reporter", "developer", "maintainer", "owner"]


class TreeGitLab(_Strict):
    """How a tree lives on GitLab: GitLab's words only. The project is named by its id, which a rename or
    a re-registered path does not change; the path is for people and links."""

    project_id: int = Field(gt=0, description="the target project's numeric id (Settings > General)")
    project: str = Field(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+$", description="its path, group/name")
    trusted_access_level: GitLabAccessLevel = Field("developer", description="members (inherited included) at "
                                                    "this access level or above run without approval")  # fmt: skip
    approver_access_level: GitLabAccessLevel = Field("maintainer", description="members at this level or above "
                                                     "may /ok-to-test an untrusted author's head")  # fmt: skip


class TreeMail(_Strict):
    """Report mail for a tree's series and staging pushes (bot/forges/mail): off unless `report` is true."""

    report: bool = Field(False, description="mail one report per series version and staging push (needs `smtp:`)")
    cc: list[str] = Field([], description="Cc of series reports, e.g. the tree's list `netdev@vger.kernel.org`")
    push_to: list[str] = Field([], description="To of staging push reports: the maintainer or the list")
    maintainers: list[str] = Field([], description="addresses whose series count as a maintainer's, besides "
                                   "MAINTAINERS (`maintainers_file`); unsigned, only a claim")  # fmt: skip
    unverified_tier: Literal["none", "qemu"] = Field("none", description="what a maintainer address's series "
                                                     "runs on unapproved without a verified signature; none: "
                                                     "it waits")  # fmt: skip
    keyring: Path | None = Field(None, description="patatt keyring directory (<algo>/<domain>/<local>/<sel>); "
                                 "a series attested by a key there runs like a trusted change")  # fmt: skip
    public_inbox_url: str | None = Field(None, description="the list's public-inbox archive (e.g. "
                                         "https://lore.kernel.org/netdev): signatures are checked on the "
                                         "original mail it keeps, else on the mail rebuilt from Patchwork")  # fmt: skip
    dkim_dns: Literal["system", "none"] = Field("system", description="where DKIM keys are looked up: "
                                                "system (the host's resolvers, cached) or none (DKIM "
                                                "reads unverifiable)")  # fmt: skip
    maintainers_file: str | None = Field(None, description="the tree's MAINTAINERS file (e.g. MAINTAINERS): an "
                                         "M:/R: address for every path the series touches, read at the "
                                         "series' base, counts as a maintainer's; unset: only "
                                         "`maintainers`")  # fmt: skip

    @field_validator("public_inbox_url")
    @classmethod
    def _archive_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"{value!r} is not an http(s)://host/LIST URL of a public-inbox archive")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry credentials (public-inbox archives are read anonymously)")
        return value.rstrip("/")

    @field_validator("maintainers_file")
    @classmethod
    def _tree_path(cls, value: str | None) -> str | None:
        reason = unsafe_path_reason(value) if value is not None else None
        if reason:
            raise ValueError(f"{value!r} is not a path inside the tree: it {reason}")
        return value


class LabGrants(_Strict):
    """What of the lab a tree grants, by tier: `hardware` is a trusted change's tier or one approved for
    boards, `qemu` an approved untrusted change's. Nothing is granted unless named here."""

    network: list[Literal["qemu", "hardware"]] = Field([], description="tiers whose tests get the DUT network "
                                                       "they ask for, on a device class that allows it")  # fmt: skip


class Tree(_Strict):
    """A repository labgate tests."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
    url: RepositoryUrl
    # Never empty: a base-commit: trailer must be on one of them (with none, any commit the mirror holds,
    # a fork's pull request head too, would be built as the trusted base).
    branches: list[str] = Field(["main"], min_length=1)
    private: bool = Field(False, description="clone with a short-lived read credential minted per checkout "
                                             "(GitHub: an installation token, contents: read, this repository only); "
                                             "its pages open only with a signed link or an operator token")
    trust: TrustPolicy = TrustPolicy()
    staging_branches: list[str] = Field([], description="pushes here run a post-merge pipeline against the "
                                        "previous head")  # fmt: skip
    test_drafts: bool = Field(False, description="also test draft changes (pull requests, merge requests)")
    poll_staging: bool = Field(False, description="no webhook tells of pushes (git.kernel.org): `labgate up` runs "
                               "git ls-remote for the staging branches every poll_interval_s")  # fmt: skip
    poll_interval_s: int = Field(300, gt=0, description="how often the staging branches are polled (poll_staging)")
    plan_file: Path | None = Field(None, description="the tree's plan (the in-tree plan's format), for trees that "
                                   "carry none: an in-tree plan, where trust allows it, still wins; relative to "
                                   "this config file")  # fmt: skip
    github: TreeGitHub | None = None
    gitlab: TreeGitLab | None = None
    mail: TreeMail = TreeMail()
    lab_grants: LabGrants = Field(LabGrants(), description="what of the lab this tree grants, by tier (DUT network)")


class WebhookSecret(NamedTuple):
    """A secret deliveries may be signed with, until a time (None: for as long as it is configured)."""

    secret: str
    until: datetime | None


class GitHubApp(_Strict):
    """The GitHub App labgate acts as. Secrets live in files, never in this YAML."""

    app_id: int = Field(gt=0)
    private_key_file: Path = Field(description="PEM private key of the App")
    webhook_secret_file: Path = Field(description="file holding the webhook secret")
    # Rotation without refused deliveries: put the new secret in webhook_secret_file and the old one
    # here with an end, restart `labgate web`, then change the secret on GitHub before that end.
    previous_webhook_secret_file: Path | None = Field(
        None, description="file holding the secret being rotated out; accepted until previous_webhook_secret_until"
    )
    previous_webhook_secret_until: AwareDatetime | None = Field(
        None, description="end of the rotation overlap, with its zone (2026-12-31T12:00:00Z); the previous "
                          "secret is refused from then on",
    )  # fmt: skip
    replay_window_days: int = Field(
        30, gt=0, le=3650, description="body digests are kept this long to refuse replays under a new delivery "
                                       "id; events whose own times are all older are ignored as replays",
    )  # fmt: skip
    api_url: str = Field("https://api.github.com", description="REST API root (GitHub Enterprise: https://HOST/api/v3)")
    write_interval_s: float = Field(
        1.0, ge=0, description="pause between writes, as GitHub asks of integrations (secondary rate limits)"
    )
    resync_interval_s: int = Field(
        600, ge=0, description="how often `labgate up` lists open pull requests to catch up on heads whose webhook "
        "never came (GitHub does not redeliver); 0: never"
    )

    @model_validator(mode="after")
    def _previous_secret_has_an_end(self) -> GitHubApp:
        if (self.previous_webhook_secret_file is None) != (self.previous_webhook_secret_until is None):
            raise ValueError("previous_webhook_secret_file and previous_webhook_secret_until go together "
                             "(an old secret is accepted only until a set time)")  # fmt: skip
        return self

    def read_webhook_secret(self) -> str:
        """The secret, or ConfigError: GitHub intake never starts without one (fail closed)."""
        return _read_secret(self.webhook_secret_file, "github.webhook_secret_file")

    def read_webhook_secrets(self) -> list[WebhookSecret]:
        """The current secret, then the previous one with its end if one is configured; ConfigError
        when a configured file is unreadable or empty."""
        secrets = [WebhookSecret(self.read_webhook_secret(), None)]
        if self.previous_webhook_secret_file is not None:
            previous = _read_secret(self.previous_webhook_secret_file, "github.previous_webhook_secret_file")
            secrets.append(WebhookSecret(previous, self.previous_webhook_secret_until))
        return secrets

    def read_private_key(self) -> str:
        try:
            return self.private_key_file.read_text()
        except OSError as exc:
            raise ConfigError(f"github.private_key_file: cannot read {self.private_key_file}: "
                              f"{exc.strerror}") from exc  # fmt: skip


class GitLab(_Strict):
    """The GitLab instance labgate reports to, as one user (a bot account or a project access token with
    the `api` scope and the Developer role on each tree's project). Secrets live in files."""

    url: str = Field(pattern=r"^https?://[^/\s]+(/\S*)?$", description="the instance, e.g. https://gitlab.com")
    token_file: Path = Field(description="file holding labgate's API token (PRIVATE-TOKEN)")
    webhook_token_file: Path = Field(description="file holding the secret token the project webhooks send "
                                     "(X-Gitlab-Token, in clear: see the README)")  # fmt: skip
    signing_token_file: Path | None = Field(None, description="file holding the webhook signing token "
                                            "(whsec_...), where the instance signs webhooks; then every "
                                            "delivery must carry a valid webhook-signature")  # fmt: skip
    write_interval_s: float = Field(0.2, ge=0, description="pause between writes to the API")

    def read_token(self) -> str:
        return _read_secret(self.token_file, "gitlab.token_file")

    def read_webhook_token(self) -> str:
        """The webhook token, or ConfigError: GitLab intake never starts without one (fail closed)."""
        return _read_secret(self.webhook_token_file, "gitlab.webhook_token_file")

    def read_signing_token(self) -> str | None:
        if self.signing_token_file is None:
            return None
        return _read_secret(self.signing_token_file, "gitlab.signing_token_file")


def _read_secret(path: Path, key: str) -> str:
    try:
        secret = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from exc
    if not secret:
        raise ConfigError(f"{key}: {path} is empty")
    return secret


class Smtp(_Strict):
    """The SMTP server report mail goes through. The password lives in a file, never in this YAML."""

    host: str = Field(min_length=1, description="a submission server, or a relay on this host")
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = Field(True, description="STARTTLS before anything else; a server that does not offer it "
                           "gets no mail (never a fall-back to plain text)")  # fmt: skip
    username: str | None = Field(None, description="AUTH user (with password_file); AUTH needs STARTTLS "
                                 "unless host is this machine")  # fmt: skip
    password_file: Path | None = Field(None, description="file holding the AUTH password")
    timeout_s: float = Field(30.0, gt=0, le=600, description="connecting and each SMTP command")
    sender: str = Field(pattern=r"^[^\r\n]*@[^\r\n]*$", description="From: of report mail, "
                        "e.g. `labgate CI <ci@lab.example.org>`")  # fmt: skip
    message_id_domain: str | None = Field(None, description="domain of our Message-Ids; unset: the sender's")

    @model_validator(mode="after")
    def _auth_needs_both(self) -> Smtp:
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together")
        return self

    def password(self) -> str | None:
        return _read_secret(self.password_file, "smtp.password_file") if self.password_file else None


class PatchworkProject(_Strict):
    """A Patchwork project whose series labgate tests."""

    project: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="the project's link name on the "
                         "server (as in /project/LINK_NAME/list/)")  # fmt: skip
    tree: str = Field(description="the tree (trees[].name) its series are applied to and tested on")
    tag_branches: dict[str, str] = Field({}, description="subject tag -> branch of the tree, for series "
                                         "without a base-commit: trailer (`net-next: main`); else the "
                                         "tree's first branch")  # fmt: skip


class Patchwork(_Strict):
    """The Patchwork server labgate polls for series and posts checks to. The token lives in a file."""

    url: str = Field(pattern=r"^https?://[^/\s]+(/\S*)?$", description="the server, e.g. https://patchwork.kernel.org")
    token_file: Path | None = Field(None, description="file holding the API token of labgate's Patchwork "
                                    "user, a maintainer of each project (else checks are refused); unset: no "
                                    "checks")  # fmt: skip
    projects: list[PatchworkProject] = []
    poll_interval_s: int = Field(300, gt=0, description="how often `labgate up` reads each project's events")
    clock_skew_s: float = Field(300.0, ge=0, le=86400, description="added to the hour a DST change needs: how "
                                "far the server's naive dates, or a late commit, may lag the newest seen")  # fmt: skip
    per_page: int = Field(100, ge=1, le=250, description="events per page (Patchwork allows up to 250)")

    def read_token(self) -> str:
        if self.token_file is None:
            raise ConfigError("patchwork.token_file: not set (checks need a maintainer's API token)")
        return _read_secret(self.token_file, "patchwork.token_file")


class WebLimits(_Strict):
    """What one client may hold of the web server (bot/web/server.py): anyone can connect to the webhook."""

    header_timeout_s: float = Field(10.0, gt=0, le=300, description="a request head (line and headers) must be "
                                    "complete this long after the connection opens or the last answer")  # fmt: skip
    body_timeout_s: float = Field(30.0, gt=0, le=300, description="the whole body must arrive this long after "
                                  "its head, however it trickles")  # fmt: skip
    keep_alive_timeout_s: int = Field(5, gt=0, le=300, description="an idle keep-alive connection is closed after this")
    max_header_bytes: int = Field(16 * 1024, ge=1024, le=1 << 20, description="largest request head (h11)")
    max_body_bytes_in_flight: int = Field(64 << 20, ge=1 << 20, description="webhook body bytes buffered, not yet "
                                          "verified, all requests together; more: 503 with Retry-After")  # fmt: skip
    limit_concurrency: int = Field(1000, gt=0, description="connections or requests in progress at once; more: "
                                   "503 (uvicorn's limit; /healthz is always answered)")  # fmt: skip
    backlog: int = Field(2048, gt=0, description="connections the kernel queues before they are accepted")


class Web(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str | None = Field(None, description="base URL of job pages in reports")
    limits: WebLimits = WebLimits()
    # Pages of private trees open only with a signed link (the one a forge report carries) or an operator token.
    link_key_file: Path | None = Field(None, description="HMAC key signing private trees' page links (32+ bytes); "
                                       "unset: data_dir/link-key, made on first use, mode 0600")  # fmt: skip
    link_lifetime_days: int = Field(30, gt=0, le=3650, description="how long a signed page link opens its pipeline")
    operator_token_sha256: list[str] = Field([], description="sha256 (hex) of each operator token; a token sent as "
                                             "`Authorization: Bearer TOKEN` opens every page")  # fmt: skip

    @field_validator("operator_token_sha256")
    @classmethod
    def _hex_digests(cls, value: list[str]) -> list[str]:
        bad = [i for i, digest in enumerate(value) if not is_sha256_hex(digest.lower())]
        if bad:
            raise ValueError(f"entries {bad} are not sha256 hex digests (64 hex digits: "
                             "printf %s TOKEN | sha256sum)")  # fmt: skip
        return [digest.lower() for digest in value]


class Config(_Strict):
    """The whole labgate configuration."""

    data_dir: Path = Field(Path(".labgate-data"), description="state, mirrors, artifacts")
    database_url: str | None = Field(None, description="unset: SQLite in data_dir")
    broker_url: str | None = Field(None, description="unset: a private redis-server in data_dir")
    web: Web = Web()
    github: GitHubApp | None = None
    gitlab: GitLab | None = None
    patchwork: Patchwork | None = None
    smtp: Smtp | None = Field(None, description="where report mail is sent from; needed by trees with mail.report")
    oidc: OidcSettings | None = Field(None, description="CI jobs as submitters (POST /api/v1/submissions): the "
                                      "id-token issuers labgate trusts and the rules saying which jobs may submit "
                                      "to which tree; unset: no submission API")  # fmt: skip
    caps: Caps = Caps()
    scheduling: Scheduling = Scheduling()
    retries: Retries = Retries()
    artifacts: ArtifactRetention = ArtifactRetention()
    sandbox: Sandbox = Sandbox()
    triage: Triage = Triage()
    known_issues: list[KnownIssueConfig] = Field(default_factory=list, description="known issues kept in config")
    trees: list[Tree] = []
    device_classes: list[DeviceClass] = [
        DeviceClass(name="qemu-x86_64", tags={"arch": "x86_64", "platform": "qemu"})
    ]

    @field_validator("device_classes")
    @classmethod
    def _unique_device_class_names(cls, value: list[DeviceClass]) -> list[DeviceClass]:
        names = [dc.name for dc in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"device class names must be unique: {', '.join(duplicates)}")
        return value

    @field_validator("trees")
    @classmethod
    def _trees_never_share_a_mirror(cls, value: list[Tree]) -> list[Tree]:
        # A worker keeps one mirror per tree, named by the tree's name made a file name ("a/b" and "a_b"
        # are one): two trees there would fetch into, prune and build from each other's objects.
        by_mirror: dict[str, list[str]] = {}
        for tree in value:
            by_mirror.setdefault(mirror_path(Path(), tree.name).name, []).append(tree.name)
        shared = [" and ".join(repr(name) for name in names) for names in by_mirror.values() if len(names) > 1]
        if shared:
            raise ValueError(f"tree names that would share one mirror (or one name twice): {'; '.join(shared)}")
        return value

    @model_validator(mode="after")
    def _mail_needs_smtp(self) -> Config:
        mailing = [f"trees.{i}.mail.report ({tree.name})" for i, tree in enumerate(self.trees) if tree.mail.report]
        if mailing and self.smtp is None:
            raise ValueError(f"{', '.join(mailing)}: mail reports need an smtp: section")
        return self

    @model_validator(mode="after")
    def _submit_rules_name_trees(self) -> Config:
        if self.oidc is None:
            return self
        names = {tree.name for tree in self.trees}
        unknown = [f"oidc.rules.{i}.tree ({rule.tree!r})" for i, rule in enumerate(self.oidc.rules)
                   if rule.tree not in names]  # fmt: skip
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: no tree of that name in trees:")
        return self

    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    def tree_for_github_repo(self, full_name: str) -> Tree | None:
        for tree in self.trees:
            if tree.github is not None and tree.github.repo.lower() == full_name.lower():
                return tree
        return None

    def tree_for_gitlab_project(self, project_id: int) -> Tree | None:
        for tree in self.trees:
            if tree.gitlab is not None and tree.gitlab.project_id == project_id:
                return tree
        return None

    def tree(self, name: str) -> Tree | None:
        for tree in self.trees:
            if tree.name == name:
                return tree
        return None

    def inventory(self) -> Inventory:
        """The device classes as the planner matches them, each with its caps."""
        return Inventory(ClassEntry(name=dc.name, tags=dict(dc.tags), memory_mb=dc.memory_mb, capacity=dc.capacity,
                                    lab=dc.lab, network=dc.network, caps=self.caps.test_caps(dc.caps))
                         for dc in self.device_classes)  # fmt: skip

    def device_class(self, name: str) -> DeviceClass:
        for dc in self.device_classes:
            if dc.name == name:
                return dc
        raise ConfigError(f"no device class named {name!r}")


def describe_validation_errors(error: ValidationError, source: str) -> list[str]:
    """One line per problem: `source: key.path: reason`."""
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"{source}: {path}: {item['msg']}")
    return lines


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse YAML text into a Config; ConfigError lists every problem with its key path."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("\n".join(describe_validation_errors(exc, source))) from exc


def load_config(path: Path | None) -> Config:
    """Load the config file; no file means every default (the embedded setup)."""
    if path is None:
        return Config()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    config = parse_config(text, str(path))
    if not config.data_dir.is_absolute():
        # A relative data dir is relative to the config file, not to wherever labgate runs.
        config = config.model_copy(update={"data_dir": (path.parent / config.data_dir)})
    inventory = config.inventory()
    return config.model_copy(update={
        "trees": [_with_plan_checked(tree, index, path, inventory) for index, tree in enumerate(config.trees)],
        "device_classes": [_with_environment_path(dc, path) for dc in config.device_classes],
    })  # fmt: skip


def _with_environment_path(device_class: DeviceClass, config_path: Path) -> DeviceClass:
    """A board class's labgrid environment, relative to the config file as written."""
    places = device_class.labgrid
    if places is None or places.environment.is_absolute():
        return device_class
    where = places.model_copy(update={"environment": config_path.parent / places.environment})
    return device_class.model_copy(update={"labgrid": where})


def _with_plan_checked(tree: Tree, index: int, config_path: Path, inventory: Inventory) -> Tree:
    """The tree with its plan_file made absolute and read once now: a broken plan, or one with a test
    no device class can run, is the operator's error, said at start with the config file and key, not
    a failed pipeline later."""
    if tree.plan_file is None:
        return tree
    plan_file = tree.plan_file if tree.plan_file.is_absolute() else config_path.parent / tree.plan_file
    where = f"{config_path}: trees[{index}].plan_file"
    try:
        text = plan_file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read {plan_file}: {getattr(exc, 'strerror', None) or exc}") from exc
    try:
        check_plan_devices(parse_plan(text, str(plan_file)), inventory, str(plan_file))
    except PlanError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return tree.model_copy(update={"plan_file": plan_file})


def config_plan(tree: Tree) -> tuple[str, str] | None:
    """(text, where) of the tree's config-side plan, if it names one."""
    if tree.plan_file is None:
        return None
    try:
        return tree.plan_file.read_text(), f"{tree.plan_file} (trees: {tree.name}: plan_file)"
    except OSError as exc:
        raise ConfigError(f"trees: {tree.name}: plan_file: cannot read {tree.plan_file}: {exc.strerror}") from exc


CONFIG_SCHEMA_TITLE = "labgate configuration"


def config_json_schema() -> dict[str, Any]:
    return json_schema(Config, CONFIG_SCHEMA_TITLE)


def render_config_json_schema() -> str:
    return render_json_schema(Config, CONFIG_SCHEMA_TITLE)


def redact_url(url: str) -> str:
    """Hide the credentials in a URL (a password, or a token given as the user) before it reaches a log."""
    return re.sub(r"(://)[^/@]+@", r"\1***@", url)
