"""Sandboxed builds: a worktree per job, the plan's script under bwrap, artifacts stored."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from workers.artifacts import ArtifactStore
from workers.checkout import add_worktree, locked, remove_worktree
from workers.sandbox import run_sandboxed
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


def parse_diagnostics(log: str, source_root: str) -> list[dict[str, object]]:
    """Compiler warnings and errors with paths made relative to the tree."""
    found: list[dict[str, object]] = []
    prefix = source_root.rstrip("/") + "/"
    for line in log.splitlines():
        match = _DIAGNOSTIC.match(line)
        if not match:
            continue
        path = match["file"].removeprefix(prefix)
        found.append({"file": path, "line": int(match["line"]), "level": match["level"],
                      "text": match["text"]})  # fmt: skip
        if len(found) >= MAX_DIAGNOSTICS:
            break
    return found


def collect_artifacts(
    build_dir: Path, patterns: tuple[str, ...], store: ArtifactStore
) -> tuple[dict[str, ArtifactRef], list[str]]:
    """Store every file matching the plan's patterns; list the patterns that matched nothing."""
    artifacts: dict[str, ArtifactRef] = {}
    missing: list[str] = []
    for pattern in patterns:
        matches = [p for p in sorted(build_dir.glob(pattern)) if p.is_file() and not p.is_symlink()]
        if not matches:
            missing.append(pattern)
        for path in matches:
            relative = str(path.relative_to(build_dir))
            artifacts[relative] = ArtifactRef(digest=store.put_file(path), mode=path.stat().st_mode & 0o777)
    return artifacts, missing


def run_build(
    spec: BuildSpec, *, mirror: Path, job_dir: Path, store: ArtifactStore, max_log_bytes: int
) -> BuildOutcome:
    source = job_dir / "src"
    build_dir = job_dir / "build"
    shutil.rmtree(build_dir, ignore_errors=True)  # a redelivered job starts clean
    build_dir.mkdir(parents=True)
    with locked(mirror):
        add_worktree(mirror, source, spec.head_sha)
    log_path = job_dir / "build.log"
    try:
        outcome = run_sandboxed(
            ["sh", "-ec", spec.script],
            cwd=source,
            writable=[source, build_dir],
            env={"LABGATE_SRC": str(source), "LABGATE_BUILD": str(build_dir)},
            timeout_s=spec.timeout_s,
            log_path=log_path,
            max_log_bytes=max_log_bytes,
        )
        artifacts: dict[str, ArtifactRef] = {}
        if outcome.timed_out:
            result, code, message = "incomplete", "timeout", f"build exceeded its {spec.timeout_s} s cap"
        elif outcome.exit_code != 0:
            result, code, message = "fail", None, f"build command exited with status {outcome.exit_code}"
        else:
            artifacts, missing = collect_artifacts(build_dir, spec.artifacts, store)
            if missing:
                result, code = "fail", None
                message = f"build produced no file for artifact pattern(s): {', '.join(missing)}"
            else:
                result, code, message = "pass", None, None
        if message:
            with log_path.open("a") as log:
                log.write(f"\n*** labgate: {message} ***\n")
        log_text = log_path.read_text(errors="replace")
        return BuildOutcome(
            result=result,
            error_code=code,
            message=message,
            log_digest=store.put_file(log_path),
            command_s=outcome.duration_s,
            artifacts=artifacts,
            diagnostics=parse_diagnostics(log_text, str(source)),
        )
    finally:
        with locked(mirror):
            remove_worktree(mirror, source)
        shutil.rmtree(build_dir, ignore_errors=True)
