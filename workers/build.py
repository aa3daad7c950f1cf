"""Sandboxed builds: the tested commit exported onto the job's own disk, the plan's script run
as the slot's uid under every cap, artifacts collected without following the build's links.
Kernel builds (BuildSpec.kernel) run in warm state instead (workers/warm.py, workers/kbuild.py)."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from workers import kbuild, warm
from workers.artifacts import ArtifactStore
from workers.cgroups import JobCgroup, create_job_cgroup
from workers.checkout import locked
from workers.collect import ArtifactCaps, collect_artifacts
from workers.errors import InfraError, UserError
from workers.jobdisk import (
    FILE_SIZE_SLACK_BYTES,
    JobDisk,
    is_nearly_full,
    mount_job_tmp,
    open_job_disk,
    release_job_tmp,
)
from workers.sandbox import Bind, SandboxLimits, SandboxMounts, SandboxOutcome, run_sandboxed, write_synthetic_etc
from workers.slots import UidRange, hold_slot
from workers.source import changed_between, export_tree, give_to
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
    kernel: dict[str, Any] | None = None  # a kernel build's outputs (workers/spec.py): warnings, warm...


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
    tree_name: str = "", warm_dir: Path | None = None,
) -> BuildOutcome:  # fmt: skip
    """Build once; a failing or capped build is an outcome, InfraError means our side broke.

    `later`, when given, takes the removal of the job's disk and directory, to run after the
    result is sent: nothing of the job runs any more by then (its cgroup is emptied and
    removed here, while the slot is held), so the verdict need not wait for an unmount.
    A kernel build (spec.kernel) with a warm_dir builds in the warm state of workers/warm.py.
    """
    if spec.kernel is not None and warm_dir is not None:
        return run_kernel_build(spec, mirror=mirror, job_dir=job_dir, uids=uids, store=store,
                                max_log_bytes=max_log_bytes, later=later, tree_name=tree_name,
                                warm_dir=warm_dir)  # fmt: skip
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


def run_kernel_build(
    spec: BuildSpec, *, mirror: Path, job_dir: Path, uids: UidRange, store: ArtifactStore, max_log_bytes: int,
    later: Callable[[Callable[[], None]], None] | None, tree_name: str, warm_dir: Path,
) -> BuildOutcome:  # fmt: skip
    """A kernel build in warm state: the warm source read-only at /labgate/src, the build dir at
    /labgate/build (the warm one for a trusted build, a throwaway copy of it for an untrusted one), the
    tree's shared ccache of (arch, toolchain) writable for trusted builds only."""
    kernel = spec.kernel
    assert kernel is not None
    started = time.monotonic()
    root = warm.warm_root(warm_dir)
    with contextlib.ExitStack() as held:
        tree = held.enter_context(warm.holding_tree(root, tree_name))
        shared = warm.ccache_dir(tree, kernel)
        if spec.trusted:  # it writes the shared ccache: this tree's trusted builds of (arch, toolchain) take turns
            held.enter_context(warm.holding_ccache(tree, kernel))
        slot = held.enter_context(hold_slot("build", uids))
        clock = _Stopwatch()
        disk = open_job_disk(job_dir, spec.limits.disk_bytes)
        cgroup: JobCgroup | None = None
        handed: tuple[Path, ...] = ()
        try:
            with locked(mirror):
                source = warm.prepare_source(tree, mirror, spec.head_sha, job_dir / "index")
            build_dir, mode, build_disk = _kernel_build_dir(spec, tree, disk)
            kconfig_kept = mode != "cold" and _config_still_holds(mirror, tree, spec)
            local_cache = disk.root / "ccache"
            local_cache.mkdir()
            wrapper = job_dir / "bin" / "cc"
            wrapper.parent.mkdir()
            shutil.copyfile(kbuild.WRAPPER, wrapper)
            wrapper.chmod(0o755)
            handed = (build_dir, shared) if spec.trusted else ()
            give_to(slot.uid, build_dir, local_cache, *((shared,) if spec.trusted else ()))
            tmp = mount_job_tmp(job_dir, spec.limits.tmp_bytes)
            etc = write_synthetic_etc(job_dir / "etc", slot.uid, "build")
            limits = sandbox_limits(spec, max_log_bytes)
            cgroup = create_job_cgroup(slot.name, memory_bytes=limits.memory_bytes, max_pids=limits.max_processes)
            binds = (Bind(tree.source, kbuild.SRC), Bind(build_dir, kbuild.BUILD, writable=True),
                     Bind(wrapper, kbuild.CC), Bind(shared, kbuild.CCACHE_SHARED, writable=spec.trusted),
                     Bind(local_cache, kbuild.CCACHE_LOCAL, writable=True))  # fmt: skip
            prepare_s = time.monotonic() - started
            since_ns = time.time_ns()
            clock.pause()
            log_path = job_dir / "build.log"
            outcome = run_sandboxed(
                ["sh", "-ec", spec.script], cwd=Path(kbuild.SRC),
                mounts=SandboxMounts(writable=(), etc_dir=etc, tmp_dir=tmp, placed=binds),
                env={**kbuild.kernel_env(kernel, trusted=spec.trusted),
                     **({"LABGATE_KCONFIG_KEPT": "1"} if kconfig_kept else {})},
                limits=limits, log_path=log_path, slot=slot, cgroup=cgroup, disk=build_disk,
            )  # fmt: skip
            collecting = time.monotonic()
            cap = outcome.cap or _disk_cap(build_disk, tmp, spec.limits.tmp_bytes, outcome, log_path)
            artifacts, result, message = _judge(outcome, cap, build_dir, spec, store)
            if message and not outcome.cap:
                with log_path.open("a") as log:
                    log.write(f"\n*** labgate: {message} ***\n")
            # A process that outlived SIGKILL may still rename things: nothing of that dir is read then.
            ledger = (kbuild.Ledger([], False, []) if outcome.stuck
                      else kbuild.read_ledger(build_dir, since_ns, tree.source))  # fmt: skip
            digest = kbuild.binary_digest(build_dir, artifacts) if result == "pass" else None
            give_to(0 if slot.uid is not None else None, *handed)
            handed = ()
            held_bytes = _settle_warm(spec, tree, outcome, root, configured=result == "pass")
            built = BuildOutcome(
                result=result, error_code=None, message=message, log_digest=store.put_file(log_path),
                command_s=outcome.duration_s, artifacts=artifacts,
                diagnostics=parse_diagnostics(log_path.read_text(errors="replace"), kbuild.SRC),
                confinement=outcome.confinement, confinement_s=outcome.setup_s, cap=cap,
                kernel={"warnings": ledger.warnings, "warnings_complete": ledger.complete,
                        "recompiled": ledger.recompiled, "binary_digest": digest,
                        "warm": {"mode": mode, "source": source.how, "source_changed": source.changed,
                                 "kconfig_kept": kconfig_kept,
                                 "prepare_s": round(prepare_s, 3), "make_s": round(outcome.duration_s, 3),
                                 "collect_s": round(time.monotonic() - collecting, 3),
                                 "held_bytes": held_bytes, "max_bytes": warm.warm_max_bytes()}},
            )  # fmt: skip
        finally:
            clock.resume()
            if handed:  # the build broke on our side: the dirs go back to root, the dirty mark stays
                give_to(0 if slot.uid is not None else None, *handed)
            if cgroup is not None:
                cgroup.remove()
            clock.pause()
            (later or _now)(lambda: _remove_job_dir(disk, job_dir))
    return replace(built, confinement_s=built.confinement_s + clock.total_s)


def _kernel_build_dir(spec: BuildSpec, tree: warm.TreeWarm, disk: JobDisk) -> tuple[Path, str, JobDisk]:
    """(build dir, mode, the disk whose cap the build is held to). Trusted: the warm dir itself, marked
    dirty until the build ends on its own, its cap a polled `du`. Untrusted: a copy on the job's disk."""
    assert spec.kernel is not None
    key = spec.kernel.warm_key
    existing = warm.take_build_dir(tree, key)
    if spec.trusted:
        path = warm.mark_dirty(tree, key)
        return path, "warm" if existing else "cold", JobDisk(path, spec.limits.disk_bytes, None)
    copy = disk.root / "build"
    if existing is None:
        copy.mkdir()
        return copy, "cold", disk
    # ext4 has no reflinks: a plain copy (cp keeps the mtimes make compares, and copies links as links).
    done = subprocess.run(["cp", "-a", "--reflink=auto", "--", str(existing), str(copy)], capture_output=True,
                          text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        cap = "over the disk cap" if disk.is_full() else "failed"
        raise UserError(f"copying the warm build dir onto the job's disk {cap}: {done.stderr.strip()[-400:]}")
    warm.touch_used(tree, key)
    return copy, "copy", disk


def _config_still_holds(mirror: Path, tree: warm.TreeWarm, spec: BuildSpec) -> bool:
    """Whether the warm build dir's .config is what the recipe's config steps would write for this commit:
    it was made from a commit whose config inputs (kbuild.makes_config) are this one's. The build's script
    then skips them (LABGATE_KCONFIG_KEPT). The inputs are compared in the mirror, never read from the dir."""
    assert spec.kernel is not None
    made_at = warm.configured_at(tree, spec.kernel.warm_key)
    if made_at is None:
        return False
    try:
        with locked(mirror):
            changes = changed_between(mirror, made_at, spec.head_sha)
    except (InfraError, UserError):
        return False  # the commit left the mirror, or a path cannot be named: make the config again
    return not any(kbuild.makes_config(change.path) for change in changes)


def _settle_warm(spec: BuildSpec, tree: warm.TreeWarm, outcome: SandboxOutcome, root: Path, *,
                 configured: bool) -> int:  # fmt: skip
    """A trusted build that ended on its own leaves a clean dir (its .config known good when it passed);
    then the disk held is brought under its cap (the shared ccache first, by a trusted build only: it
    holds the ccache's lock)."""
    assert spec.kernel is not None
    if spec.trusted and outcome.cap is None and not outcome.stuck:
        warm.mark_clean(tree, spec.kernel.warm_key, spec.head_sha if configured else None)
    max_bytes = warm.warm_max_bytes()
    if spec.trusted:  # it holds the shared ccache's lock: a quarter of the cap at most
        warm.prune_ccache(warm.ccache_dir(tree, spec.kernel), max_bytes // 4)
    return warm.evict(root, tree, spec.kernel.warm_key, max_bytes)
