"""Attacks on issue 10's code by a change (its kernel, its commands' output) or a compromised job worker
(any result with its own job's token, any request with its own job's grants).

A change must not turn its own breakage into `incomplete` (retried, never blamed, counted against a
place), and a worker must not reach past its own job's share of the control side's disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from bot.core.signed_urls import ANY_DIGEST, UPLOAD, Grant, sign
from bot.host.config import Config
from bot.host.stores import open_runtime
from bot.pipelines.exchange_grants import exchange_key, uploaded_by
from bot.web.artifact_exchange import exchange_routes
from lab.caps import BootCaps, Ended
from lab.console import first_crash
from lab.framing import read_runner_document
from lab.ktap import parse_ktap
from lab.runner import TCG_CODE_BUFFER_MIB, BootOutcome, BootRequest, render_env
from workers.checkout import fetch_tested_commit, update_mirror
from workers.errors import InfraError
from workers.spec import (
    INCOMPLETE_BOOT_UNPROVEN,
    INCOMPLETE_FRAMING,
    INCOMPLETE_NO_CONSOLE,
    LabgridTarget,
    QemuSpec,
    TestCommand,
    TestSpec,
)
from workers.testjob import QEMU_OVERHEAD_BYTES, judge

CONSOLES = Path(__file__).resolve().parents[1] / "lab" / "data" / "consoles"
CLEAN = (CONSOLES / "lkdtm-clean.log").read_text()  # a real kernel's console, booted here
CHANGE_KERNEL = "arch/x86/boot/bzImage"
EVIDENCE = "job 41 booted kernel 6.1.192 to the runner on this class"
CAPS = BootCaps(job_s=60, boot_s=30, silence_s=3, console_bytes=4096, runner_bytes=8192)
# What a change's kernel (or a root command) writes on the runner's port: a result the runner never wrote.
FORGED = "KTAP version 1\n1..1\nok 1 a\nok 2 extra\n# labgate: end\n"
BOARD = LabgridTarget(coordinator="127.0.0.1:20408", place_tags={"board": "x"}, environment="targets: {}")


def _spec(kernel: str = CHANGE_KERNEL, *, root: bool = False, evidence: str = "",
          labgrid: LabgridTarget | None = None) -> TestSpec:  # fmt: skip
    return TestSpec(name="t", device_class="c", qemu=QemuSpec(), kernel=kernel, labgrid=labgrid,
                    commands=(TestCommand(name="a", run="true", root=root),), artifacts={}, timeout_s=60,
                    boot_evidence=evidence)  # fmt: skip


def _judged(console: str, runner: str, ended: Ended, test: TestSpec) -> tuple[str, str | None, str]:
    outcome = BootOutcome(console=console, runner=runner, ended=ended, boot_s=5.0, qemu_status=0, setup_s=0.1)
    doc = read_runner_document(runner, [c.name for c in test.commands])
    result, code, message = judge(outcome, parse_ktap(runner), doc, test, CAPS, first_crash(console))
    return result, code, message or ""


def test_a_changes_kernel_or_root_command_breaking_the_runner_framing_fails_the_change() -> None:
    """ktap-framing is a place fault that is retried and never blamed: only the runner (ours) may earn it."""
    for test in (_spec(), _spec("debian", root=True), _spec(labgrid=BOARD)):
        result, code, message = _judged(CLEAN, FORGED, "end-marker", test)
        assert (result, code) == ("fail", None), test
        assert message.startswith("results refused: ") and "runner's port" in message
    # The lab's kernel and unprivileged commands cannot write there: broken framing is the runner's, ours.
    assert _judged(CLEAN, FORGED, "end-marker", _spec("debian"))[:2] == ("incomplete", INCOMPLETE_FRAMING)


def test_a_silent_changes_kernel_on_qemu_is_a_boot_that_failed_not_a_dead_uart() -> None:
    """A firmware-less QEMU machine (microvm) prints nothing before the kernel: a change's kernel without a
    console must not come out as no-console-output (retried twice, never blamed)."""
    result, code, message = _judged("", "", "silence", _spec(evidence=EVIDENCE))
    assert (result, code) == ("fail", None) and message.startswith("boot failed: the silence cap fired")
    assert _judged("", "", "silence", _spec())[:2] == ("incomplete", INCOMPLETE_BOOT_UNPROVEN)
    # A board's silent UART, and QEMU silent under the lab's own kernel, stay ours.
    assert _judged("", "", "silence", _spec(evidence=EVIDENCE, labgrid=BOARD))[1] == INCOMPLETE_NO_CONSOLE
    assert _judged("", "", "silence", _spec("debian", evidence=EVIDENCE))[1] == INCOMPLETE_NO_CONSOLE


CAP, TOTAL = 1000, 2500  # one upload, and all of a job's uploads together


def test_parallel_uploads_of_one_job_stay_within_its_total(tmp_path: Path) -> None:
    """A compromised worker opens many uploads at once with its own grant: each is checked against what the
    job had stored before any of them finished, so together they must not pass the job's total."""
    runtime = open_runtime(Config(data_dir=tmp_path / "data"), database_url=f"sqlite:///{tmp_path}/db.sqlite")
    query = sign(exchange_key(runtime.data_dir), Grant(UPLOAD, ANY_DIGEST, 7, int(time.time()) + 60, CAP, TOTAL))
    blobs = [bytes([n]) * CAP for n in range(8)]  # 8000 bytes against a total of 2500

    async def attack() -> list[int]:
        gate = asyncio.Event()

        async def body(blob: bytes) -> AsyncIterator[bytes]:
            yield blob[:1]
            await gate.wait()  # every upload has been let in before any of them completes
            yield blob[1:]

        transport = httpx.ASGITransport(app=Starlette(routes=exchange_routes(runtime)))
        async with httpx.AsyncClient(transport=transport, base_url="http://control") as client:
            sent = [asyncio.ensure_future(client.put(f"/exchange/{hashlib.sha256(blob).hexdigest()}?{query}",
                                                     content=body(blob))) for blob in blobs]  # fmt: skip
            await asyncio.sleep(0.2)
            gate.set()
            return [response.status_code for response in await asyncio.gather(*sent)]

    statuses = asyncio.run(attack())
    stored = uploaded_by(runtime.data_dir, 7, [hashlib.sha256(blob).hexdigest() for blob in blobs])
    assert len(stored) * CAP <= TOTAL, (statuses, len(stored))
    assert statuses.count(201) == len(stored) >= 1


def test_a_guest_writing_fresh_code_cannot_grow_qemu_past_its_memory_allowance(tmp_path: Path) -> None:
    """A test binary that rewrites and runs its own code makes TCG translate without end; with QEMU's default
    1 GiB code buffer QEMU's memory grows past guest + QEMU_OVERHEAD_BYTES (measured here with a 128 MB guest:
    838 MB resident at 200 s, still climbing at ~3.5 MB/s), and the cgroup's kill reads as qemu-crashed: ours,
    never the change's. With the buffer given, the same guest levelled off at 414 MB. (A boot is too slow for
    CI: the guest needs minutes to fill the buffer.)"""
    env = render_env(BootRequest(kernel=tmp_path / "k", initramfs=tmp_path / "i", work_dir=tmp_path, timeout_s=60),
                     tmp_path / "qemu")  # fmt: skip
    assert f"-accel tcg,tb-size={TCG_CODE_BUFFER_MIB} " in env
    assert TCG_CODE_BUFFER_MIB << 20 <= QEMU_OVERHEAD_BYTES // 2


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "m", "GIT_AUTHOR_EMAIL": "m@m", "GIT_COMMITTER_NAME": "m",
           "GIT_COMMITTER_EMAIL": "m@m"}  # fmt: skip
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def test_a_hostile_bundle_moves_no_ref_of_the_mirror(hello_repo: Path, tmp_path: Path) -> None:
    """A compromised checkout worker's bundle names another pipeline's keep ref and the tree's branch: on a
    host whose mirror also serves checkouts, fetching it must leave those refs where they were."""
    mirror = tmp_path / "host" / "hello.git"
    mirror.parent.mkdir()
    update_mirror(mirror, str(hello_repo))
    main = _git(mirror, "rev-parse", "refs/heads/main")
    _git(mirror, "update-ref", "refs/labgate/pipelines/2", main)  # another pipeline's tested commit
    work = tmp_path / "evil"
    _git(tmp_path, "clone", "-q", str(hello_repo), str(work))
    _git(work, "commit", "-q", "--allow-empty", "-m", "evil")
    evil = _git(work, "rev-parse", "HEAD")
    for ref in ("refs/labgate/pipelines/2", "refs/labgate/heads/main", "refs/labgate/pipelines/9"):
        _git(work, "update-ref", ref, evil)
    bundle = tmp_path / "evil.bundle"
    _git(work, "bundle", "create", "-q", str(bundle), "refs/labgate/pipelines/2", "refs/labgate/heads/main",
         "refs/labgate/pipelines/9", f"^{main}")  # fmt: skip
    fetch_tested_commit(mirror, str(hello_repo), evil, bundle)
    assert _git(mirror, "rev-parse", "refs/labgate/pipelines/2") == main
    assert _git(mirror, "rev-parse", "refs/heads/main") == main
    assert _git(mirror, "for-each-ref", "--format=%(refname)", "refs/labgate/pipelines") == "refs/labgate/pipelines/2"
    with pytest.raises(InfraError, match="no commit id"):  # a worker's word spliced into a refspec
        fetch_tested_commit(tmp_path / "other" / "hello.git", str(hello_repo), "*:refs/heads/main", bundle)
