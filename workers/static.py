"""The static stage: checkpatch per commit, `git diff --check` and kernel-doc, before any build.

The tools are the BASE's (a change could rewrite scripts/checkpatch.pl to find nothing): only the
files they need are exported from the mirror at the base into the job's directory, with the patches
(`git format-patch` of each commit of base..head) and the changed C files beside them. Git runs only
in the bare mirror, as root. The tools are still a tree's code and read the change's text, so they
run in the sandbox as the slot's uid, with nothing writable but their own /tmp, no network and the
job's caps; each run gets a fresh cgroup, and the stage as a whole gets spec.timeout_s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from workers.artifacts import ArtifactStore
from workers.cgroups import create_job_cgroup
from workers.checkout import GIT_IDENTITY, has_commit, locked
from workers.errors import InfraError
from workers.patchname import MAX_SUBJECT, shown
from workers.sandbox import SandboxLimits, SandboxMounts, run_sandboxed, write_synthetic_etc
from workers.slots import Slot, UidRange, hold_slot
from workers.spec import StaticSpec, TestCase, unsafe_path_reason
from workers.static_parse import (
    Finding,
    new_findings,
    parse_checkpatch,
    parse_diff_check,
    parse_kernel_doc,
    slug,
)

CHECKPATCH = "scripts/checkpatch.pl"
KERNEL_DOC = "scripts/kernel-doc"
# What checkpatch (with --no-tree: no spdxcheck, no MAINTAINERS, no git) and kernel-doc read of the
# tree. scripts/lib/kdoc: kernel-doc's Python library in trees where kernel-doc became Python.
TOOL_FILES = (CHECKPATCH, "scripts/spelling.txt", "scripts/const_structs.checkpatch", ".checkpatch.conf", KERNEL_DOC)
TOOL_DIRS = ("scripts/lib/kdoc",)
MAX_TOOL_FILE_BYTES = 8 << 20
MAX_PATCHES = 100  # commits of one change checked; a longer series' rest is named, not checked
MAX_PATCH_BYTES = 32 << 20  # one commit's mail (checkpatch takes ~5 s for 11,000 lines: this is far past it)
MAX_DOC_FILES = 200
MAX_DOC_FILE_BYTES = 4 << 20
MAX_TOOL_OUTPUT_BYTES = 1 << 20  # one tool run's output; a flood past it stops the tool
MAX_ANNOTATIONS = 500
# /usr/bin first: the system's python3 and perl, never a shim of /usr/local (lab-notes §5).
SANDBOX_PATH = "/usr/bin:/bin"
_INTERPRETERS = {b"perl": "/usr/bin/perl", b"python3": "/usr/bin/python3"}
# The mails checkpatch reads carry a/ and b/ prefixes whatever a host's gitconfig prefers.
_GIT = ["git", "-c", "core.hooksPath=/dev/null", "-c", "diff.noprefix=false", "-c", "diff.mnemonicPrefix=false",
        "-c", "diff.relative=false", "--literal-pathspecs"]  # fmt: skip


@dataclass
class StaticOutcome:
    result: str  # pass | fail
    log_digest: str
    command_s: float
    tests: list[TestCase]
    annotations: list[dict[str, object]]
    annotations_complete: bool
    confinement: dict[str, str] = field(default_factory=dict)
    export_s: float = 0.0


@dataclass(frozen=True)
class _Commit:
    sha: str
    subject: str
    patch: Path | None  # None: over the size cap, not written


@dataclass
class _Inputs:
    tools: Path
    tool_files: set[str]
    commits: list[_Commit]
    more_commits: int  # past MAX_PATCHES
    head_files: Path
    base_files: Path
    doc_files: list[str]  # changed .c/.h files written under head_files
    doc_skipped: int
    diff_check: tuple[int, str, bool] | None  # (exit code, output, truncated)


@dataclass
class _Run:
    """One tool run in the sandbox, as the log and the verdict see it."""

    output: str
    exit_code: int
    cap: str | None


@dataclass
class _Stage:
    """What the checks add up to while they run."""

    spec: StaticSpec
    slot: Slot
    job_dir: Path
    deadline: float
    tests: list[TestCase] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    command_s: float = 0.0
    confinement: dict[str, str] = field(default_factory=dict)

    def add(self, path: str, status: str, reason: str, findings: Sequence[Finding] = (), text: str = "") -> None:
        self.tests.append(TestCase(path=path, status=status, reason=reason))  # type: ignore[arg-type]
        self.findings.extend(findings)
        self.log.append(f"=== {path}: {status}{': ' + reason if reason else ''} ===\n{text}")


def run_static(spec: StaticSpec, *, mirror: Path, job_dir: Path, uids: UidRange, store: ArtifactStore,
               max_log_bytes: int) -> StaticOutcome:  # fmt: skip
    """Run the static checks of base..head; a finding is a result, InfraError means our side broke."""
    with hold_slot("build", uids) as slot:
        shutil.rmtree(job_dir, ignore_errors=True)  # a redelivered job's leftovers
        job_dir.mkdir(parents=True)
        try:
            started = time.monotonic()
            with locked(mirror):
                inputs = _export(spec, mirror, job_dir)
            export_s = time.monotonic() - started
            stage = _Stage(spec, slot, job_dir, time.monotonic() + spec.timeout_s)
            write_synthetic_etc(job_dir / "etc", slot.uid, "build")
            _checkpatch(stage, inputs)
            _diff_check(stage, inputs)
            _kernel_doc(stage, inputs)
            log_path = job_dir / "static.log"
            _write_log(log_path, stage.log, max_log_bytes)
            failed = any(test.status == "fail" for test in stage.tests)
            return StaticOutcome(
                result="fail" if failed else "pass", log_digest=store.put_file(log_path),
                command_s=stage.command_s, tests=stage.tests,
                annotations=[f.annotation() for f in stage.findings[:MAX_ANNOTATIONS]],
                annotations_complete=len(stage.findings) <= MAX_ANNOTATIONS, confinement=stage.confinement,
                export_s=export_s,
            )  # fmt: skip
        finally:
            # The sandbox could write nothing here (all of it was mounted read-only): plain removal is safe.
            shutil.rmtree(job_dir, ignore_errors=True)


# --- the inputs, from the mirror -------------------------------------------------------------------


def _export(spec: StaticSpec, mirror: Path, job_dir: Path) -> _Inputs:
    for sha, what in ((spec.base_sha, "base"), (spec.head_sha, "head")):
        if not has_commit(mirror, sha):
            raise InfraError(f"the {what} commit {sha[:12]} is not in the mirror {mirror.name}")
    tools = job_dir / "tools"
    tools.mkdir()
    tool_files = _export_tools(mirror, spec.base_sha, tools)
    # What the change wrote is measured from where it forked: a head that does not descend from the base
    # (a branch behind it) would otherwise be blamed for the base's newer commits, as the checkout's
    # changed files are (base...head). The tools stay the base's own.
    fork = _git(mirror, ["merge-base", spec.base_sha, spec.head_sha], check=False).decode().strip() or spec.base_sha
    commits: list[_Commit] = []
    more = 0
    if spec.checkpatch != "off" and CHECKPATCH in tool_files:
        commits, more = _format_patches(mirror, spec, job_dir / "patches")
    doc_files, doc_skipped = _changed_c_files(mirror, fork, spec.head_sha) if spec.kernel_doc else ([], 0)
    head_files, base_files = job_dir / "head", job_dir / "base"
    doc_files = _write_blobs(mirror, spec.head_sha, doc_files, head_files)
    _write_blobs(mirror, fork, doc_files, base_files)
    diff_check = None
    if spec.diff_check:
        diff_check = _git_capped(mirror, ["diff", "--check", "--no-color", "--no-ext-diff", fork, spec.head_sha],
                                 MAX_TOOL_OUTPUT_BYTES)  # fmt: skip
        if diff_check[0] not in (0, 2) and not diff_check[2]:  # 2: whitespace errors; else git itself failed
            raise InfraError(f"git diff --check failed: {diff_check[1][-600:]}")
    for directory in (tools, job_dir / "patches"):
        if directory.exists():
            _readable(directory)
    return _Inputs(tools, tool_files, commits, more, head_files, base_files, doc_files, doc_skipped, diff_check)


def _export_tools(mirror: Path, base_sha: str, dest: Path) -> set[str]:
    """The base's tool files (regular files only; a symlink in scripts/ is written as its target's
    content), by their names in the tree. Returns the names written."""
    listing = _git(mirror, ["ls-tree", "-r", "-z", "--full-tree", base_sha, "--", *TOOL_FILES, *TOOL_DIRS])
    entries: dict[str, tuple[str, str]] = {}  # name -> (mode, blob)
    for record in listing.split(b"\0"):
        if record:
            meta, _, raw = record.partition(b"\t")
            mode, kind, blob = meta.decode().split()
            if kind == "blob":
                entries[raw.decode("utf-8", "replace")] = (mode, blob)
    written = set()
    for name, (mode, blob) in entries.items():
        if mode == "120000":  # e.g. scripts/kernel-doc -> kernel-doc.py: the target, beside it
            target = _git(mirror, ["cat-file", "blob", blob]).decode("utf-8", "replace")
            sibling = f"{name.rsplit('/', 1)[0]}/{target}" if "/" in name else target
            found = {} if "/" in target else _tree_blobs(mirror, base_sha, sibling, entries)
            if sibling not in found:
                continue
            mode, blob = found[sibling]
        if _write_blob(mirror, blob, dest, name, MAX_TOOL_FILE_BYTES):
            written.add(name)
    return written


def _write_blob(mirror: Path, blob: str, dest: Path, name: str, max_bytes: int) -> bool:
    """A blob of the mirror as the plain file dest/name anyone may read; False (nothing written) past
    max_bytes or for a name that would leave dest. Git lists a crafted tree's "../x.c" as it is (only
    its index refuses such names), and these files are written by root."""
    if unsafe_path_reason(name) is not None:
        return False
    data = _git(mirror, ["cat-file", "blob", blob])
    if len(data) > max_bytes:
        return False
    path = dest / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o644)
    return True


def _tree_blobs(mirror: Path, sha: str, name: str, known: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """{name: (mode, blob)} for one regular file of the tree at sha (empty when it is none)."""
    if name in known:
        return {name: known[name]} if known[name][0] != "120000" else {}
    out = _git(mirror, ["ls-tree", "-z", "--full-tree", sha, "--", name]).rstrip(b"\0")
    meta, _, _ = out.partition(b"\t")
    parts = meta.decode().split()
    return {name: (parts[0], parts[2])} if len(parts) == 3 and parts[1] == "blob" and parts[0] != "120000" else {}


def _format_patches(mirror: Path, spec: StaticSpec, dest: Path) -> tuple[list[_Commit], int]:
    """One mail per non-merge commit of base..head, as `git format-patch` writes it, named by number. The
    signature ("-- ") ends the diff: checkpatch reports a missing sign-off at the mail's last line, which
    without it would be the last line of the last file."""
    dest.mkdir()
    shas = _git(mirror, ["rev-list", "--reverse", "--no-merges", f"{spec.base_sha}..{spec.head_sha}"]).split()
    commits = []
    for number, raw in enumerate(shas[:MAX_PATCHES], 1):
        sha = raw.decode()
        subject = _git(mirror, ["log", "-1", "--format=%s", sha]).decode("utf-8", "replace").strip()
        code, text, truncated = _git_capped(mirror, ["format-patch", "-1", "--stdout", "--no-color", "--no-ext-diff",
                                                     "--no-textconv", "--signature=labgate", sha],
                                            MAX_PATCH_BYTES, binary=True)  # fmt: skip
        if code != 0 and not truncated:
            raise InfraError(f"git format-patch {sha[:12]} failed: {text[-600:]}")
        path = None
        if not truncated:
            path = dest / f"{number:04d}.patch"
            path.write_text(text, encoding="utf-8", errors="surrogateescape")
            path.chmod(0o644)
        commits.append(_Commit(sha, subject, path))
    return commits, max(0, len(shas) - MAX_PATCHES)


def _changed_c_files(mirror: Path, fork: str, head_sha: str) -> tuple[list[str], int]:
    """The .c and .h files the change adds or modifies (names git can give as UTF-8 and we can write)."""
    out = _git(mirror, ["diff", "--name-only", "-z", "--no-renames", "--diff-filter=d", fork, head_sha])
    names = []
    for raw in out.split(b"\0"):
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if name.endswith((".c", ".h")) and name.isprintable() and unsafe_path_reason(name) is None:
            names.append(name)
    return names[:MAX_DOC_FILES], max(0, len(names) - MAX_DOC_FILES)


def _write_blobs(mirror: Path, sha: str, names: list[str], dest: Path) -> list[str]:
    """Write the regular files `names` of the tree at sha under dest; returns those written."""
    dest.mkdir()
    if not names:
        return []
    listing = _git(mirror, ["ls-tree", "-z", "--full-tree", sha, "--", *names])
    written = []
    for record in listing.split(b"\0"):
        meta, _, raw_name = record.partition(b"\t")
        parts = meta.decode().split()
        name = raw_name.decode("utf-8", "replace")
        if len(parts) != 3 or parts[1] != "blob" or parts[0] == "120000" or name not in names:
            continue
        if _write_blob(mirror, parts[2], dest, name, MAX_DOC_FILE_BYTES):
            written.append(name)
    _readable(dest)
    return sorted(written, key=names.index)


def _readable(top: Path) -> None:
    """Directories the sandbox's uid may enter whatever the worker's umask (it reads, never writes)."""
    for directory in [top, *[p for p in top.rglob("*") if p.is_dir() and not p.is_symlink()]]:
        directory.chmod(0o755)


def _git(mirror: Path, args: list[str], *, check: bool = True) -> bytes:
    done = subprocess.run([*_GIT, f"--git-dir={mirror}", *args], capture_output=True, env=_git_env(), check=False)
    if check and done.returncode != 0:
        raise InfraError(f"git {' '.join(args[:3])} failed: {done.stderr.decode(errors='replace').strip()[-600:]}")
    return done.stdout


def _git_capped(mirror: Path, args: list[str], cap: int, *, binary: bool = False) -> tuple[int, str, bool]:
    """(exit code, output, truncated): git's stdout read up to cap bytes, git killed past it."""
    with subprocess.Popen([*_GIT, f"--git-dir={mirror}", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env=_git_env()) as process:  # fmt: skip
        assert process.stdout is not None
        data = process.stdout.read(cap + 1)
        truncated = len(data) > cap
        if truncated:
            process.kill()
        code = process.wait()
    text = data[:cap].decode("utf-8", "surrogateescape" if binary else "replace")
    return code, text, truncated


def _git_env() -> dict[str, str]:
    return {**os.environ, **GIT_IDENTITY, "LC_ALL": "C"}


# --- the checks, in the sandbox -------------------------------------------------------------------


def _checkpatch(stage: _Stage, inputs: _Inputs) -> None:
    if stage.spec.checkpatch == "off":
        return
    if CHECKPATCH not in inputs.tool_files:
        stage.add("static/checkpatch", "skip", f"the base has no {CHECKPATCH}")
        return
    options = ["--terse", "--show-types", "--no-tree", *(["--strict"] if stage.spec.checkpatch == "strict" else [])]
    for number, commit in enumerate(inputs.commits, 1):
        path = f"static/checkpatch/{number}-{slug(commit.subject)}"
        header = f'commit {commit.sha[:12]} "{shown(commit.subject, MAX_SUBJECT)}"\n'
        if commit.patch is None:
            stage.add(path, "fail", f"the patch is larger than {MAX_PATCH_BYTES >> 20} MiB: not checked", text=header)
            continue
        # cwd is the base's tree: checkpatch reads its .checkpatch.conf from there. The patch is named
        # relative to it, so the log shows no path of the worker's.
        relative = f"../{commit.patch.parent.name}/{commit.patch.name}"
        run = _sandboxed(stage, [_interpreter(inputs.tools / CHECKPATCH), CHECKPATCH, *options, "--", relative],
                         inputs.tools, (inputs.tools, commit.patch.parent))  # fmt: skip
        patch_text = commit.patch.read_text(errors="replace")
        findings = parse_checkpatch(run.output, patch_text, commit.sha)
        status, reason = _verdict(findings, run, "checkpatch", ok_codes=(0, 1))
        stage.add(path, status, reason, findings, header + run.output)
    if inputs.more_commits:
        stage.add("static/checkpatch/more", "skip",
                  f"{inputs.more_commits} more commit(s) past the first {MAX_PATCHES}: not checked")  # fmt: skip


def _diff_check(stage: _Stage, inputs: _Inputs) -> None:
    if inputs.diff_check is None:
        return
    code, output, truncated = inputs.diff_check
    findings = parse_diff_check(output)
    if code == 0:
        stage.add("static/diff-check", "pass", "", findings, output)
        return
    reason = f"{len(findings)} whitespace error(s)" if findings else f"git diff --check exited with status {code}"
    if truncated:
        reason += f" (output cut at {MAX_TOOL_OUTPUT_BYTES} bytes)"
    stage.add("static/diff-check", "fail", reason, findings, output)


def _kernel_doc(stage: _Stage, inputs: _Inputs) -> None:
    if not stage.spec.kernel_doc:
        return
    if KERNEL_DOC not in inputs.tool_files:
        stage.add("static/kernel-doc", "skip", f"the base has no {KERNEL_DOC}")
        return
    if not inputs.doc_files:
        stage.add("static/kernel-doc", "skip", "the change touches no .c or .h file")
        return
    tool = inputs.tools / KERNEL_DOC
    runs = []
    in_base = [name for name in inputs.doc_files if (inputs.base_files / name).is_file()]
    for tree, names in ((inputs.head_files, inputs.doc_files), (inputs.base_files, in_base)):
        # "./name": a changed file called "-v.c" is a file to kernel-doc, never an option.
        runs.append(_sandboxed(stage, [_interpreter(tool), str(tool), "-none", *[f"./{n}" for n in names]], tree,
                               (inputs.tools, tree)) if names else None)  # fmt: skip
    head, base = runs
    assert head is not None
    findings = new_findings(parse_kernel_doc(head.output), parse_kernel_doc(base.output) if base else [])
    status, reason = _verdict(findings, head, "kernel-doc", ok_codes=None)
    if base is not None and base.cap and status == "pass":
        reason = f"{reason}; the base's run stopped ({base.cap}), so older warnings may count as new".lstrip("; ")
    if inputs.doc_skipped:
        reason = f"{reason}; {inputs.doc_skipped} more file(s) not checked".lstrip("; ")
    summary = (f"kernel-doc -none on {len(inputs.doc_files)} changed file(s): {len(findings)} finding(s) the "
               "base's copies of these files do not have\n")  # fmt: skip
    stage.add("static/kernel-doc", status, reason, findings, summary + head.output)


def _verdict(findings: Sequence[Finding], run: _Run, tool: str, ok_codes: tuple[int, ...] | None) -> tuple[str, str]:
    """A tool run's TestCase status and reason: errors, a cap or a crash fail; warnings are counted."""
    errors = sum(1 for f in findings if f.level == "error")
    warnings = len(findings) - errors
    counted = ", ".join(part for part in (f"{errors} error(s)" if errors else "",
                                          f"{warnings} warning(s)" if warnings else "") if part)  # fmt: skip
    if run.cap:
        return "fail", f"{tool} stopped: it hit {run.cap}" + (f" ({counted} before)" if counted else "")
    if ok_codes is not None and run.exit_code not in ok_codes:
        return "fail", f"{tool} exited with status {run.exit_code}" + (f" ({counted})" if counted else "")
    return ("fail" if errors else "pass"), counted


def _sandboxed(stage: _Stage, argv: list[str], cwd: Path, read_only: tuple[Path, ...]) -> _Run:
    """One tool run, under the stage's remaining time and the job's caps, in a fresh cgroup."""
    limits = stage.spec.limits
    remaining = stage.deadline - time.monotonic()
    if remaining <= 0:
        return _Run("", -1, f"the static stage's wall-time cap of {stage.spec.timeout_s} s")
    sandbox_limits = SandboxLimits(
        timeout_s=remaining, max_output_bytes=MAX_TOOL_OUTPUT_BYTES, memory_bytes=limits.memory_bytes,
        max_processes=limits.max_processes, tmp_bytes=limits.tmp_bytes, max_file_bytes=limits.tmp_bytes,
    )  # fmt: skip
    log_path = stage.job_dir / "tool.log"
    cgroup = create_job_cgroup(stage.slot.name, memory_bytes=limits.memory_bytes, max_pids=limits.max_processes)
    try:
        outcome = run_sandboxed(
            argv, cwd=cwd, mounts=SandboxMounts(writable=(), read_only=read_only, etc_dir=stage.job_dir / "etc"),
            env={"PATH": SANDBOX_PATH}, limits=sandbox_limits, log_path=log_path, slot=stage.slot, cgroup=cgroup,
        )  # fmt: skip
    finally:
        if cgroup is not None:
            cgroup.remove()
    if outcome.stuck:
        raise InfraError(f"a static check's processes outlived SIGKILL in slot {stage.slot.name}")
    stage.command_s += outcome.duration_s
    stage.confinement = outcome.confinement
    cap = outcome.cap
    if cap is not None and cap.startswith("the wall-time cap"):  # it had what was left of the stage's time
        cap = f"the static stage's wall-time cap of {stage.spec.timeout_s} s"
    return _Run(log_path.read_text(errors="replace"), outcome.exit_code, cap)


def _interpreter(tool: Path) -> str:
    """The system interpreter a tool's #! line names (perl or python3 only: nothing else runs)."""
    with tool.open("rb") as handle:
        first = handle.readline(200)
    for word, interpreter in _INTERPRETERS.items():
        if first.startswith(b"#!") and word in first:
            return interpreter
    return _INTERPRETERS[b"perl"]  # checkpatch and kernel-doc were Perl for most of their lives


def _write_log(path: Path, parts: list[str], max_bytes: int) -> None:
    data = "\n".join(parts).encode("utf-8", "replace")
    if len(data) > max_bytes:
        note = b"\n*** labgate: log cut at the log cap ***\n"
        data = data[: max(0, max_bytes - len(note))] + note
    path.write_bytes(data)
