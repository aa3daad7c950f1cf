"""Test jobs: artifacts into an initramfs, a confined boot through the lab, the runner's KTAP into results."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lab.arch import arch_named
from lab.board import BoardRequest, PlaceFault, run_board_boot
from lab.caps import CAP_ENDINGS, BootCaps, cap_message
from lab.console import Crash, first_crash
from lab.errors import LabSetupError
from lab.framing import RunnerDocument, ran_as_root_only, read_runner_document
from lab.initramfs import Command, StoredFile, build_initramfs
from lab.kernel import fetch_debian_busybox, fetch_debian_kernel
from lab.ktap import KtapDocument, flatten_results, parse_ktap
from lab.modules import ModulesError, unpack_modules
from lab.places import HeldPlace, PlaceUnavailable, end_health_check, place_in_service
from lab.runner import SECCOMP_FD, BootOutcome, BootRequest, run_boot
from workers import seccomp
from workers.artifacts import ArtifactStore
from workers.cgroups import JobCgroup, create_job_cgroup
from workers.errors import InfraError, UserError
from workers.sandbox import SandboxMounts, bwrap_argv, write_synthetic_etc
from workers.slots import DEFAULT_QEMU_UIDS, QEMU_UIDS_ENV, Slot, UidRange, hold_slot
from workers.spec import (
    INCOMPLETE_BOOT_UNPROVEN,
    INCOMPLETE_FRAMING,
    INCOMPLETE_LAB_KERNEL,
    INCOMPLETE_NO_CONSOLE,
    INCOMPLETE_PLACE_UNAVAILABLE,
    INCOMPLETE_POWER,
    INCOMPLETE_QEMU_CRASHED,
    ArtifactRef,
    JobResult,
    JobSpec,
    TestCase,
    TestSpec,
)

log = logging.getLogger(__name__)
ARTIFACTS_ON_TARGET = "/labgate/artifacts"
ROOT_CAVEAT = "ran as root: not forge-proof"
QEMU_OVERHEAD_BYTES = 768 << 20  # QEMU's own memory beyond the guest's (TCG code buffer, devices)
QEMU_MAX_PROCESSES = 256  # QEMU's threads (vCPU, I/O workers)
QEMU_TMP_BYTES = 16 << 20
PLACE_WAIT_ENV = "LABGATE_LAB_PLACE_WAIT_S"  # how long a board job waits for a place (the lab worker's env)
DEFAULT_PLACE_WAIT_S = 900.0


def test_cases(doc: KtapDocument, caveat: str = "") -> tuple[TestCase, ...]:
    cases = []
    for path, result in flatten_results(doc):
        diagnostics = "\n".join((*result.diagnostics, *result.problems))
        cases.append(TestCase(path=path, status=result.status, directive=result.directive,
                              reason=result.reason, diagnostics=diagnostics, caveat=caveat))  # fmt: skip
    return tuple(cases)


def verdict(runner: RunnerDocument, doc: KtapDocument) -> tuple[str, str | None]:
    """(result, message) of a well-framed runner document. The runner's own result lines come
    first: a command's output, whatever it holds, can add failures but never remove one, and
    malformed KTAP in it fails the job rather than hiding anything."""
    if any(status == "fail" for _, status in runner.results) or doc.status == "fail":
        return "fail", None
    if doc.status == "incomplete":
        return "fail", "a command printed malformed KTAP: " + "; ".join(doc.problems[:5])
    if runner.results and all(status == "skip" for _, status in runner.results):
        return "skip", None
    return "pass", None


def judge(outcome: BootOutcome, doc: KtapDocument, runner: RunnerDocument, test: TestSpec, caps: BootCaps,
          crash: Crash | None) -> tuple[str, str | None, str | None]:  # fmt: skip
    """(result, error_code, message) of one boot: `fail` when the change's code made it end so, `incomplete`
    (with its code) when our side did.

    After the runner started, a kernel crash is a failure carrying its title, before any cap that
    fired after it; a cap is the change's failure. A boot that never reached the runner is the
    change's failure only when its own kernel did it on a class seen booting to the runner
    (test.boot_evidence); the lab's kernel failing, or QEMU dying with an error, is ours.
    Broken runner framing is ours only when nothing of the change could write to the runner's port.
    """
    tail = console_tail(outcome.console)
    stopped = _why_stopped(outcome, caps)
    if outcome.ended == "end-marker":
        if crash is not None:
            return "fail", None, f"kernel crash while the tests ran: {crash.title}"
        if runner.problems:
            refused = "results refused: " + "; ".join(runner.problems)
            if test.kernel != "debian" or any(c.root for c in test.commands):
                # The change's kernel, or its command run as root, can write to the runner's port: the
                # change broke (or forged) the framing, and must not hide that as our fault.
                return "fail", None, f"{refused} (the change's kernel or root command can write to the runner's port)"
            return "incomplete", INCOMPLETE_FRAMING, refused
        result, message = verdict(runner, doc)
        return result, None, message
    if outcome.reached_runner:
        if crash is not None:
            return "fail", None, f"kernel crash while the tests ran: {crash.title}; then {stopped}"
        if outcome.qemu_status not in (0, None):
            return "incomplete", INCOMPLETE_QEMU_CRASHED, f"{stopped}; console ends:\n{tail}"
        return "fail", None, f"the tests did not finish: {stopped}; console ends:\n{tail}"
    if outcome.qemu_status not in (0, None):
        return "incomplete", INCOMPLETE_QEMU_CRASHED, f"{stopped}; console ends:\n{tail}"
    if outcome.console_silent and (test.labgrid is not None or test.kernel == "debian"):
        # Not one byte, not even firmware's or a boot loader's banner: the UART, the board or its power is
        # dead, whatever kernel was staged. It counts against the place, never against the change. Not so
        # on QEMU, whose serial port lives as long as QEMU does (QEMU dying is caught above): there a silent
        # change's kernel (a machine without firmware banner) is judged as any kernel that never booted.
        return "incomplete", INCOMPLETE_NO_CONSOLE, f"the target printed nothing on its console: {stopped}"
    why = f"{crash.title} ({stopped})" if crash is not None else stopped
    if test.kernel != "debian":
        if test.boot_evidence:
            return "fail", None, (f"boot failed: {why}; this device class booted to the runner before "
                                  f"({test.boot_evidence}); console ends:\n{tail}")  # fmt: skip
        return "incomplete", INCOMPLETE_BOOT_UNPROVEN, (
            f"the change's kernel never reached the runner: {why}; this device class has no boot to the "
            f"runner on record, so the change is not blamed; console ends:\n{tail}")  # fmt: skip
    return "incomplete", INCOMPLETE_LAB_KERNEL, (f"the lab's kernel never reached the runner: {why}; "
                                                 f"console ends:\n{tail}")  # fmt: skip


def console_tail(console: str, lines: int = 15, width: int = 300) -> str:
    """The console's last lines for a message, each cut to `width` (a flood can be one line of megabytes)."""
    last = console[-lines * (width + 1) * 4 :].rstrip().split("\n")[-lines:]
    return "\n".join(line if len(line) <= width else line[:width] + " [...]" for line in last)


def _why_stopped(outcome: BootOutcome, caps: BootCaps) -> str:
    if outcome.ended in CAP_ENDINGS:
        return cap_message(outcome.ended, caps, outcome.boot_s)
    if outcome.qemu_status not in (0, None):
        return f"QEMU exited with status {outcome.qemu_status} (not the guest's power-off)"
    if outcome.qemu_status == 0:
        return "the guest powered off or reset before the runner's end marker"
    return "the target's console hung up before the runner's end marker"


def job_caps(spec: JobSpec) -> BootCaps:
    """The caps a test job's boot runs under: the lab's, from the spec (never the plan's own); the
    runner's port, which carries the commands' output, is capped like any job's log."""
    test = spec.test
    assert test is not None
    return BootCaps(job_s=test.timeout_s, boot_s=test.boot_timeout_s, silence_s=test.silence_timeout_s,
                    console_bytes=test.max_console_bytes, runner_bytes=spec.max_log_bytes)  # fmt: skip


def run_test_job(spec: JobSpec, delivery: int, work_root: Path, store: ArtifactStore,
                 on_waiting: Callable[[str], None] | None = None) -> JobResult:  # fmt: skip
    """One test job: a confined local QEMU boot, or a board's through its coordinator. `on_waiting`
    hears once why a board job waits for a place (who holds them), while it waits."""
    test = spec.test
    assert test is not None
    if test.labgrid is not None:
        return run_board_job(spec, delivery, work_root, store, on_waiting)
    uids = UidRange.from_env(QEMU_UIDS_ENV, DEFAULT_QEMU_UIDS)
    with hold_slot("qemu", uids) as slot:
        started = time.monotonic()
        work = work_root / "work" / f"job-{spec.job_id}"
        shutil.rmtree(work, ignore_errors=True)  # a redelivered job starts clean
        work.mkdir(parents=True)
        work.chmod(0o755)
        cgroup = create_job_cgroup(slot.name, memory_bytes=_memory_bytes(test.qemu.memory) + QEMU_OVERHEAD_BYTES,
                                   max_pids=QEMU_MAX_PROCESSES)  # fmt: skip
        confinement_s = time.monotonic() - started
        try:
            outcome = _boot(spec, test, work, store, slot, cgroup)
        except LabSetupError as exc:
            raise InfraError(f"lab: {exc}") from exc
        finally:
            ending = time.monotonic()
            if cgroup is not None:
                cgroup.remove()
            confinement_s += time.monotonic() - ending
            shutil.rmtree(work, ignore_errors=True)
    return _job_result(spec, delivery, outcome, store, {"confinement": _describe(slot, cgroup),
                                                        "confinement_s": round(confinement_s, 3)})  # fmt: skip


def run_board_job(spec: JobSpec, delivery: int, work_root: Path, store: ArtifactStore,
                  on_waiting: Callable[[str], None] | None = None) -> JobResult:  # fmt: skip
    """A test on a place of the class's coordinator, through lab/board.py: the board owns its QEMU (or
    is real hardware), so the worker confines nothing here; it holds the place, never a QEMU.

    A place's drivers failing is a result (`incomplete`, power-driver-error, naming the place), not a
    retry: the control side counts it against the place and retries elsewhere. Every result names
    its place (outputs["place"]). A health check (test.health_check_place) boots its place held offline
    and hands it back to service only when it passes (outputs["health_check"])."""
    test = spec.test
    assert test is not None and test.labgrid is not None
    work = work_root / "work" / f"job-{spec.job_id}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    checked = test.health_check_place
    caps = job_caps(spec)
    try:
        kernel, initramfs = _images(test, work, store)
        board = run_board_boot(BoardRequest(
            coordinator=test.labgrid.coordinator, place_tags=test.labgrid.place_tags,
            environment=test.labgrid.environment, kernel=kernel, initramfs=initramfs, work_dir=work / "board",
            timeout_s=caps.job_s, boot_timeout_s=caps.boot_s, silence_timeout_s=caps.silence_s,
            max_console_bytes=caps.console_bytes, max_runner_bytes=caps.runner_bytes, network=test.network,
            place_wait_s=float(os.environ.get(PLACE_WAIT_ENV, DEFAULT_PLACE_WAIT_S)),
            avoid_places=test.avoid_places, health_check_place=checked,
            offline_why=f"health check (job {spec.job_id})",
        ), on_waiting=lambda why: _waiting(spec.job_id, why, on_waiting))  # fmt: skip
    except PlaceUnavailable as exc:
        result = JobResult(job_id=spec.job_id, delivery=delivery, result="incomplete",
                           error_code=INCOMPLETE_PLACE_UNAVAILABLE, error_message=str(exc),
                           outputs={"place": checked})  # fmt: skip
        return _end_health_check(test, result, taken_offline=False)
    except PlaceFault as exc:
        result = JobResult(job_id=spec.job_id, delivery=delivery, result="incomplete", error_code=INCOMPLETE_POWER,
                           error_message=f"{exc} (the board's fault, not the change's)",
                           outputs={**_held_outputs(exc.held), "failed_step": exc.step})  # fmt: skip
        return _end_health_check(test, result, taken_offline=True)
    except LabSetupError as exc:  # before any place was held: the coordinator, the images
        raise InfraError(f"lab: {exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    held = _held_outputs(HeldPlace(board.place, "", board.waited_s, board.waited_for, board.avoided))
    return _end_health_check(test, _job_result(spec, delivery, board.boot, store, held), taken_offline=True)


def _held_outputs(held: HeldPlace) -> dict[str, object]:
    """Which place a board job ran on, how long and for whom it waited, and what it avoided."""
    outputs: dict[str, object] = {"place": held.name, "place_wait_s": round(held.waited_s, 3),
                                  "waited_for": held.waited_for}  # fmt: skip
    if held.avoided:
        outputs["avoided"] = held.avoided
    return outputs


def _end_health_check(test: TestSpec, result: JobResult, taken_offline: bool) -> JobResult:
    """A health check's place back in service on a pass, kept offline (saying why) on anything else."""
    place = test.health_check_place
    if place is None or test.labgrid is None:
        return result
    passed = result.result == "pass"
    reason = f"{result.result}" + (f" ({result.error_code})" if result.error_code else "")
    if result.error_message:
        reason += ": " + result.error_message.strip().split("\n", 1)[0][:300]
    try:
        if taken_offline:
            online = end_health_check(test.labgrid.coordinator, place, passed, reason)
        else:  # never held: a job kept it the whole wait; it stays as it is
            online = place_in_service(test.labgrid.coordinator, place)
    except LabSetupError as exc:
        raise InfraError(f"lab: ending the health check of {place}: {exc}") from exc
    outputs = {**result.outputs, "health_check": {"place": place, "passed": passed, "online": online}}
    return result.model_copy(update={"outputs": outputs})


def _waiting(job_id: int, why: str, tell: Callable[[str], None] | None) -> None:
    log.info("job %s: waiting for a place: %s", job_id, why)
    if tell is not None:
        try:
            tell(why)
        except Exception:  # the report is late, the job goes on
            log.warning("job %s: telling the control side it waits failed", job_id, exc_info=True)


def _job_result(spec: JobSpec, delivery: int, outcome: BootOutcome, store: ArtifactStore,
                outputs: dict[str, object]) -> JobResult:  # fmt: skip
    """Judge one boot's ports into the job's result."""
    test = spec.test
    assert test is not None
    names = [c.name for c in test.commands]
    runner = read_runner_document(outcome.runner, names, kunit=test.kunit)
    try:
        doc = parse_ktap(outcome.runner)
    except Exception as exc:  # the commands' output broke our parser: it never passes, and it is not our outage
        log.exception("job %s: KTAP parser failed", spec.job_id)
        why = f"the output could not be parsed ({type(exc).__name__})"
        doc = KtapDocument(None, None, (), "incomplete", (why,), ())
    crash = first_crash(outcome.console)
    result, code, message = judge(outcome, doc, runner, test, job_caps(spec), crash)
    if crash is not None:
        outputs = {**outputs, "crash": {"title": crash.title, "kind": crash.kind, "excerpt": crash.excerpt}}
    framing = runner.problems if outcome.ended == "end-marker" else []
    as_root = any(c.root for c in test.commands) or ran_as_root_only(outcome.runner)
    caveat = ROOT_CAVEAT if as_root else ""
    record = outcome.console + "\n# ---- labgate: the runner's port ----\n" + outcome.runner
    return JobResult(
        job_id=spec.job_id, delivery=delivery, result=result, error_code=code,  # type: ignore[arg-type]
        error_message=message, log_digest=store.put_bytes(record.encode()),
        command_s=outcome.boot_s, tests=() if framing else test_cases(doc, caveat),
        outputs={"ended": outcome.ended, "reached_runner": outcome.reached_runner, "boot_s": round(outcome.boot_s, 3),
                 "setup_s": round(outcome.setup_s, 3), **outputs},
    )  # fmt: skip


def _boot(spec: JobSpec, test: TestSpec, work: Path, store: ArtifactStore, slot: Slot,
          cgroup: JobCgroup | None) -> BootOutcome:  # fmt: skip
    kernel, initramfs = _images(test, work, store)
    runtime = Path(tempfile.mkdtemp(prefix="labgate-qemu-"))
    etc = write_synthetic_etc(work / "etc", slot.uid, "qemu")
    filtered = seccomp.is_supported()
    confine = bwrap_argv(
        [], cwd=runtime, mounts=SandboxMounts(writable=(runtime,), read_only=(kernel, initramfs), etc_dir=etc,
                                              dev_shm=False),
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"}, uid=slot.uid, tmp_bytes=QEMU_TMP_BYTES,
        seccomp_fd=SECCOMP_FD if filtered else None,
    )  # fmt: skip
    if test.network and "--unshare-net" not in confine:
        # Slirp's gateway forwards to the loopback of QEMU's network namespace: it must never be the host's.
        raise InfraError("lab: a granted DUT network needs QEMU in a network namespace of its own")
    caps = job_caps(spec)
    try:
        return run_boot(BootRequest(
            kernel=kernel, initramfs=initramfs, work_dir=work, timeout_s=caps.job_s, boot_timeout_s=caps.boot_s,
            silence_timeout_s=caps.silence_s, network=test.network, arch=test.qemu.arch,
            memory=test.qemu.memory, machine=test.qemu.machine, cpu=test.qemu.cpu,
            max_console_bytes=caps.console_bytes, max_runner_bytes=caps.runner_bytes,
            confine=tuple(confine), sandbox_uid=slot.uid, runtime_dir=runtime,
            seccomp_filter=seccomp.build_filter() if filtered else None,
            cgroup_procs=tuple(d / "cgroup.procs" for d in cgroup.dirs) if cgroup is not None else (),
        ))  # fmt: skip
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def _images(test: TestSpec, work: Path, store: ArtifactStore) -> tuple[Path, Path]:
    """The kernel and the initramfs (the runner, the commands, the build's artifacts and modules) a test boots."""
    # Artifacts go straight from the store into the image: the lab side writes no file a
    # worker-sent name could place (only the kernel, under its base name, and the modules, checked).
    files: dict[str, Path | bytes | StoredFile] = {
        f"{ARTIFACTS_ON_TARGET}/{relative}": StoredFile(store.path_of(ref.digest), bool(ref.mode & 0o111))
        for relative, ref in test.artifacts.items() if relative not in (test.kernel, test.modules)
    }  # fmt: skip
    arch = arch_named(test.qemu.arch)
    kernel = _kernel(test.kernel, test.artifacts, store, work, arch.name)
    commands = [Command(c.name, c.run, root=c.root) for c in test.commands]
    try:
        modules = _modules(test, store, work)
        initramfs = build_initramfs(work / "initramfs.cpio.gz", files, commands=commands, kunit=test.kunit,
                                    runner_port=arch.runner_port, modules=modules,
                                    busybox=fetch_debian_busybox(_cache_dir() / "busybox", arch.name))  # fmt: skip
    except ValueError as exc:
        raise UserError(f"test {test.name}: {exc}") from exc
    return kernel, initramfs


def _modules(test: TestSpec, store: ArtifactStore, work: Path) -> Path | None:
    """The build's modules tarball (test.modules), checked member by member and unpacked for the image."""
    if test.modules is None:
        return None
    ref = test.artifacts.get(test.modules)
    if ref is None:
        raise UserError(f"test {test.name}: modules {test.modules!r} is not an artifact of its build "
                        f"(artifacts: {', '.join(sorted(test.artifacts)) or 'none'})")  # fmt: skip
    try:
        return unpack_modules(store.path_of(ref.digest), work / "modules")
    except ModulesError as exc:
        raise UserError(f"test {test.name}: {exc}") from exc


def _describe(slot: Slot, cgroup: JobCgroup | None) -> dict[str, str]:
    return {
        "uid": f"{slot.uid} (slot {slot.index})" if slot.uid is not None else f"{os.getuid()} (worker not root)",
        "qemu": "-sandbox on (obsolete, elevateprivileges, spawn, resourcecontrol denied), no network, no host device",
        "mounts": "/usr, the kernel and the image read-only; its socket directory",
        "memory": cgroup.mechanism if cgroup is not None else "guest memory only (no cgroup)",
        "dut": "commands as the unprivileged DUT user; results only from the runner's own serial port",
    }


def _memory_bytes(text: str) -> int:
    """QEMU's -m size ("512M", "2G", a plain number of MiB)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text) << 20


def _cache_dir() -> Path:
    # Shared by every data dir on the machine: the kernel package is 70 MB and changes rarely.
    return Path(os.environ.get("LABGATE_CACHE_DIR", "~/.cache/labgate")).expanduser()


def _kernel(name: str, artifacts: dict[str, ArtifactRef], store: ArtifactStore, work: Path, arch: str) -> Path:
    if name == "debian":
        return fetch_debian_kernel(_cache_dir() / "kernel", arch=arch)
    ref = artifacts.get(name)
    if ref is None:
        raise UserError(f"test kernel {name!r} is not an artifact of its build "
                        f"(artifacts: {', '.join(sorted(artifacts)) or 'none'})")  # fmt: skip
    path = work / "kernel" / Path(name).name  # the base name only: nothing a name holds can climb out
    store.materialize(ref.digest, path, 0o644)
    return path
