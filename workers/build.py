"""Sandboxed builds: the tested commit exported onto the job's own disk, the plan's script run
as the slot's uid under every cap, artifacts collected without following the build's links."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from workers.artifacts import ArtifactStore
from workers.cgroups import JobCgroup, create_job_cgroup
from workers.checkout import locked
from workers.collect import ArtifactCaps, collect_artifacts
from workers.jobdisk import (
    FILE_SIZE_SLACK_BYTES,
    JobDisk,
    is_nearly_full,
    mount_job_tmp,
    open_job_disk,
    release_job_tmp,
)
from workers.sandbox import SandboxLimits, SandboxMounts, SandboxOutcome, run_sandboxed, write_synthetic_etc
from workers.slots import UidRange, hold_slot
from workers.source import export_tree, give_to
from workers.spec import ArtifactRef, BuildSpec

# gcc/clang diagnostics: "path:line:col: warning: text" (also error).
_DIAGNOSTIC = re.compile(
    r"^(?P<file>[^\s:]+):(?P<line>\d+):(?:(?P<col>\d+):)? (?P<level>warning|error): (?P<text>.*)$"
)
MAX_DIAGNOSTICS = 200


@dataclass(frozen=True)
class BuildOutcome:
    result: str  # pass fail incomplete
    error_code: str | None
    message: str | None
    log_digest: str
    command_s: float
    artifacts: dict[str, ArtifactRef]
    diagnostics: list[dict[str, object]]
    confinement: dict[str, str]
    confinement_s: float  # sandbox, disk and cgroup set-up and teardown, outside the command
    cap: str | None = None


def parse_diagnostics(log: str, source_root: str) -> list[dict[str, object]]:
    """Compiler warnings and errors with paths made relative to the tree."""
    found: list[dict[str, object]] = []
    prefix = source_root.rstrip("/") + "/"
    for line in log.split("\n"):
        match = _DIAGNOSTIC.match(line)
        if not match:
            continue
        path = match["file"].removeprefix(prefix)
        found.append({"file": path, "line": int(match["line"]), "level": match["level"],
                      "text": match["text"]})  # fmt: skip
        if len(found) >= MAX_DIAGNOSTICS:
            break
    return found


def sandbox_limits(spec: BuildSpec, max_log_bytes: int) -> SandboxLimits:
    limits = spec.limits
    return SandboxLimits(
        timeout_s=spec.timeout_s, max_output_bytes=max_log_bytes, memory_bytes=limits.memory_bytes,
        max_processes=limits.max_processes, tmp_bytes=limits.tmp_bytes,
        max_file_bytes=limits.disk_bytes + FILE_SIZE_SLACK_BYTES,
    )  # fmt: skip


def run_build(
    spec: BuildSpec, *, mirror: Path, job_dir: Path, uids: UidRange, store: ArtifactStore,
    max_log_bytes: int, later: Callable[[Callable[[], None]], None] | None = None,
) -> BuildOutcome:  # fmt: skip
    """Build once; a failing or capped build is an outcome, InfraError means our side broke.

    `later`, when given, takes the removal of the job's disk and directory, to run after the
    result is sent: nothing of the job runs any more by then (its cgroup is emptied and
    removed here, while the slot is held), so the verdict need not wait for an unmount.
    """
    with hold_slot("build", uids) as slot:
        clock = _Stopwatch()
        disk = open_job_disk(job_dir, spec.limits.disk_bytes)  # also clears a redelivered job's leftovers
        cgroup: JobCgroup | None = None
        try:
            source, build_dir = disk.root / "src", disk.root / "build"
            clock.pause()  # the export is the checkout's work, not the sandbox's
            with locked(mirror):
                export_tree(mirror, spec.head_sha, source, job_dir / "index")
            clock.resume()
            build_dir.mkdir()
            give_to(slot.uid, source, build_dir)
            tmp = mount_job_tmp(job_dir, spec.limits.tmp_bytes)
            etc = write_synthetic_etc(job_dir / "etc", slot.uid, "build")
            limits = sandbox_limits(spec, max_log_bytes)
            cgroup = create_job_cgroup(slot.name, memory_bytes=limits.memory_bytes, max_pids=limits.max_processes)
            clock.pause()
            log_path = job_dir / "build.log"
            outcome = run_sandboxed(
                ["sh", "-ec", spec.script], cwd=source,
                mounts=SandboxMounts(writable=(source, build_dir), etc_dir=etc, tmp_dir=tmp),
                env={"LABGATE_SRC": str(source), "LABGATE_BUILD": str(build_dir)},
                limits=limits, log_path=log_path, slot=slot, cgroup=cgroup, disk=disk,
            )  # fmt: skip
            cap = outcome.cap or _disk_cap(disk, tmp, spec.limits.tmp_bytes, outcome, log_path)
            artifacts, result, message = _judge(outcome, cap, build_dir, spec, store)
            with log_path.open("a") as log:
                if message and not outcome.cap:
                    log.write(f"\n*** labgate: {message} ***\n")
            log_text = log_path.read_text(errors="replace")
            built = BuildOutcome(
                result=result, error_code=None, message=message, log_digest=store.put_file(log_path),
                command_s=outcome.duration_s, artifacts=artifacts,
                diagnostics=parse_diagnostics(log_text, str(source)), confinement=outcome.confinement,
                confinement_s=outcome.setup_s, cap=cap,
            )  # fmt: skip
        finally:
            clock.resume()
            if cgroup is not None:
                cgroup.remove()
            clock.pause()
            (later or _now)(lambda: _remove_job_dir(disk, job_dir))
    return replace(built, confinement_s=built.confinement_s + clock.total_s)


def _now(action: Callable[[], None]) -> None:
    action()


def _remove_job_dir(disk: JobDisk, job_dir: Path) -> None:
    release_job_tmp(job_dir / "tmp")
    disk.release()
    shutil.rmtree(job_dir, ignore_errors=True)


class _Stopwatch:
    """Adds up the spans between resume() and pause(); starts running."""

    def __init__(self) -> None:
        self.total_s = 0.0
        self._since: float | None = time.monotonic()

    def pause(self) -> None:
        if self._since is not None:
            self.total_s += time.monotonic() - self._since
            self._since = None

    def resume(self) -> None:
        if self._since is None:
            self._since = time.monotonic()


def _judge(outcome: SandboxOutcome, cap: str | None, build_dir: Path, spec: BuildSpec,
           store: ArtifactStore) -> tuple[dict[str, ArtifactRef], str, str | None]:  # fmt: skip
    """(artifacts, result, message): a cap the build's own code made fire is its failure, also
    when the build ignored the error it got (ENOSPC) and exited 0."""
    if cap is not None:
        return {}, "fail", f"build stopped: it hit {cap}"
    if outcome.exit_code != 0:
        return {}, "fail", f"build command exited with status {outcome.exit_code}"
    caps = ArtifactCaps(spec.limits.max_artifact_bytes, spec.limits.max_artifacts_bytes)
    collected = collect_artifacts(build_dir, spec.artifacts, store, caps)
    if collected.refused:
        return {}, "fail", "artifacts refused: " + "; ".join(collected.refused)
    if collected.missing:
        return {}, "fail", f"build produced no file for artifact pattern(s): {', '.join(collected.missing)}"
    return collected.artifacts, "pass", None


def _disk_cap(disk: JobDisk, tmp: Path | None, tmp_bytes: int, outcome: SandboxOutcome,
              log_path: Path) -> str | None:  # fmt: skip
    """A build that filled its disk (or /tmp) hit that cap, whatever it printed or returned after."""
    if disk.is_full():
        return f"the disk cap of {disk.limit_bytes >> 20} MiB"
    tmp_cap = f"the /tmp cap of {tmp_bytes >> 20} MiB"
    if tmp is not None:  # a tmpfs the worker mounted: its fill is there to read
        return tmp_cap if is_nearly_full(tmp) else None
    if outcome.exit_code == 0:
        return None
    # bwrap's own tmpfs is gone with the sandbox: the build's last words are all there is.
    with log_path.open("rb") as log:
        log.seek(max(0, log_path.stat().st_size - 65536))
        tail = log.read()
    return tmp_cap if b"No space left on device" in tail else None
