"""Test jobs: artifacts into an initramfs, a boot through the lab, KTAP into results."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lab.errors import LabSetupError
from lab.initramfs import Command, build_initramfs
from lab.kernel import fetch_debian_kernel
from lab.ktap import KtapDocument, flatten_results, parse_ktap
from lab.runner import BootOutcome, BootRequest, run_boot
from workers.artifacts import ArtifactStore
from workers.errors import InfraError, UserError
from workers.spec import ArtifactRef, JobResult, JobSpec, TestCase

ARTIFACTS_ON_TARGET = "/labgate/artifacts"


def test_cases(doc: KtapDocument) -> tuple[TestCase, ...]:
    cases = []
    for path, result in flatten_results(doc):
        diagnostics = "\n".join((*result.diagnostics, *result.problems))
        cases.append(TestCase(path=path, status=result.status, directive=result.directive,
                              reason=result.reason, diagnostics=diagnostics))  # fmt: skip
    return tuple(cases)


def judge(outcome: BootOutcome, doc: KtapDocument) -> tuple[str, str | None, str | None]:
    """(result, error_code, message) of one boot."""
    if outcome.ended == "end-marker":
        message = "; ".join(doc.problems) if doc.status == "incomplete" else None
        return doc.status, None, message
    tail = "\n".join(outcome.console.rstrip().splitlines()[-15:])
    if outcome.ended == "timeout":
        return "incomplete", "timeout", f"no end of the KTAP document before the cap; console ends:\n{tail}"
    if outcome.ended == "console-limit":
        return "incomplete", "log-limit", "console output exceeded the log cap"
    return "incomplete", "boot-failed", f"the target stopped before the end of the tests; console ends:\n{tail}"


def run_test_job(spec: JobSpec, delivery: int, data_dir: Path) -> JobResult:
    test = spec.test
    assert test is not None
    store = ArtifactStore(data_dir / "artifacts")
    work = data_dir / "work" / f"job-{spec.job_id}"
    shutil.rmtree(work, ignore_errors=True)  # a redelivered job starts clean
    work.mkdir(parents=True)
    try:
        files: dict[str, Path | bytes] = {}
        for relative, ref in test.artifacts.items():
            if relative == test.kernel:
                continue
            local = work / "artifacts" / relative
            store.materialize(ref.digest, local, ref.mode)
            files[f"{ARTIFACTS_ON_TARGET}/{relative}"] = local
        kernel = _kernel(test.kernel, test.artifacts, store, work)
        initramfs = build_initramfs(work / "initramfs.cpio.gz", files,
                                    commands=[Command(c.name, c.run) for c in test.commands])  # fmt: skip
        outcome = run_boot(BootRequest(
            kernel=kernel, initramfs=initramfs, work_dir=work, timeout_s=test.timeout_s,
            memory=test.qemu.memory, machine=test.qemu.machine, cpu=test.qemu.cpu,
            max_console_bytes=spec.max_log_bytes,
        ))  # fmt: skip
    except LabSetupError as exc:
        raise InfraError(f"lab: {exc}") from exc
    finally:
        shutil.rmtree(work / "artifacts", ignore_errors=True)
    doc = parse_ktap(outcome.console)
    result, code, message = judge(outcome, doc)
    return JobResult(
        job_id=spec.job_id, delivery=delivery, result=result, error_code=code,  # type: ignore[arg-type]
        error_message=message, log_digest=store.put_bytes(outcome.console.encode()),
        command_s=outcome.boot_s, tests=test_cases(doc),
        outputs={"ended": outcome.ended, "boot_s": round(outcome.boot_s, 3),
                 "setup_s": round(outcome.setup_s, 3)},
    )  # fmt: skip


def _kernel(name: str, artifacts: dict[str, ArtifactRef], store: ArtifactStore, work: Path) -> Path:
    if name == "debian":
        # Shared by every data dir on the machine: the package is 70 MB and changes rarely.
        cache = Path(os.environ.get("LABGATE_CACHE_DIR", "~/.cache/labgate")).expanduser()
        return fetch_debian_kernel(cache / "kernel")
    ref = artifacts.get(name)
    if ref is None:
        raise UserError(f"test kernel {name!r} is not an artifact of its build "
                        f"(artifacts: {', '.join(sorted(artifacts)) or 'none'})")  # fmt: skip
    path = work / "kernel" / Path(name).name
    store.materialize(ref.digest, path, 0o644)
    return path
