"""arm64 under QEMU (TCG): the argv, the runner's own port, Debian's arm64 inputs, and real confined boots.

The boots go through the test worker (run_test_job) as a lab worker runs them: a slot uid, bwrap,
seccomp, a cgroup, `-sandbox on`, no NIC. The test binary is cross-built here with Debian's
aarch64-linux-gnu-gcc, as the example plan's arm64 build does.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from bot.host.config import QemuTarget
from lab.arch import ARCHES, arch_named
from lab.errors import LabSetupError
from lab.initramfs import RUNNER_PORT_FILE, build_initramfs
from lab.kernel import fetch_debian_busybox, fetch_debian_kernel, parse_image_dependency
from lab.runner import QEMU_SANDBOX, TCG_CODE_BUFFER_MIB, BootRequest, render_env
from tests.lab.test_initramfs import read_image
from tests.requirements import missing
from workers.artifacts import ArtifactStore
from workers.spec import ArtifactRef, JobResult, JobSpec, QemuSpec, TestCommand, TestSpec
from workers.testjob import run_test_job

REPO = Path(__file__).resolve().parents[2]
ARM64_QEMU = QemuSpec(arch="arm64", machine="virt", cpu="cortex-a57")


def extra_args(req: BootRequest, tmp_path: Path) -> list[str]:
    env = yaml.safe_load(render_env(req, tmp_path / "qemu", tmp_path / "runner.sock"))
    driver = env["targets"]["main"]["drivers"]["QEMUDriver"]
    return [*shlex.split(driver["extra_args"]), "-append", driver["boot_args"], "-nic", driver["nic"]]


def test_arm64_gets_the_same_confinement_and_its_own_runner_port(tmp_path: Path) -> None:
    common = {"kernel": tmp_path / "k", "initramfs": tmp_path / "i", "work_dir": tmp_path, "timeout_s": 60}
    x86 = extra_args(BootRequest(**common), tmp_path)  # type: ignore[arg-type]
    arm = extra_args(BootRequest(**common, arch="arm64", machine="virt", cpu="cortex-a57"), tmp_path)  # type: ignore[arg-type]
    for argv in (x86, arm):
        assert argv[argv.index("-sandbox") + 1] == QEMU_SANDBOX
        assert argv[argv.index("-accel") + 1] == f"tcg,tb-size={TCG_CODE_BUFFER_MIB}"
        assert argv[argv.index("-nic") + 1] == "none"
    assert "isa-serial,chardev=runner,index=1" in x86 and "console=ttyS0 panic=-1" in x86
    assert "pci-serial,chardev=runner" in arm and "console=ttyAMA0 panic=-1" in arm
    # Only the runner's device and the console differ: the rest is one argv, built once.
    assert [a for a in x86 if "serial" not in a and "console=" not in a] == [
        a for a in arm if "serial" not in a and "console=" not in a
    ]


def test_an_unknown_arch_is_a_setup_error_naming_the_known_ones() -> None:
    with pytest.raises(LabSetupError, match="arm64, x86_64"):
        arch_named("riscv64")


def test_the_runner_port_is_never_the_console() -> None:
    for arch in ARCHES.values():
        assert arch.runner_port != arch.console


def test_the_initramfs_names_the_runner_port_and_refuses_a_path_for_it(tmp_path: Path) -> None:
    image = build_initramfs(tmp_path / "i.cpio.gz", {}, runner_port="ttyS0")
    assert read_image(image)[RUNNER_PORT_FILE.lstrip("/")].data == b"ttyS0\n"
    with pytest.raises(ValueError, match="plain device name"):
        build_initramfs(tmp_path / "j.cpio.gz", {}, runner_port="../console")


def test_apt_cache_depends_of_a_foreign_arch_names_the_package() -> None:
    answer = "linux-image-arm64:arm64\n  Depends: linux-image-6.1.0-57-arm64:arm64\n"
    assert parse_image_dependency(answer, "linux-image-arm64") == "linux-image-6.1.0-57-arm64"


def test_an_arm64_class_needs_only_its_arch_and_refuses_an_x86_machine() -> None:
    assert QemuTarget(arch="arm64") == QemuTarget(arch="arm64", machine="virt", cpu="cortex-a57")
    assert QemuTarget().arch == "x86_64" and QemuTarget().machine == "q35"
    with pytest.raises(ValueError, match="machine: virt"):
        QemuTarget(arch="arm64", machine="q35")


def test_an_explicit_arm64_busybox_wins_and_a_missing_one_is_said(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF")
    monkeypatch.setenv("LABGATE_BUSYBOX_ARM64", str(busybox))
    assert fetch_debian_busybox(tmp_path / "cache", "arm64") == busybox
    monkeypatch.setenv("LABGATE_BUSYBOX_ARM64", str(tmp_path / "nothing"))
    with pytest.raises(LabSetupError, match="LABGATE_BUSYBOX_ARM64"):
        fetch_debian_busybox(tmp_path / "cache", "arm64")


# --- real boots ----------------------------------------------------------------------------------


def lab_cache() -> Path:
    return Path(os.environ.get("LABGATE_CACHE_DIR", "~/.cache/labgate")).expanduser()


@pytest.fixture(scope="module")
def arm64_lab() -> None:
    """What an arm64 boot needs, where the worker takes it from (scripts/setup.sh fetches it)."""
    if os.geteuid() != 0 or shutil.which("qemu-system-aarch64") is None:
        missing("an arm64 boot needs root and qemu-system-aarch64; scripts/setup.sh installs them")
    try:
        fetch_debian_kernel(lab_cache() / "kernel", arch="arm64")
        fetch_debian_busybox(lab_cache() / "busybox", "arm64")
    except LabSetupError as exc:
        missing(f"no arm64 boot inputs: {exc}")


@pytest.fixture(scope="module")
def arm64_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static aarch64 program, cross-built as the example plan's arm64 build does."""
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        missing("aarch64-linux-gnu-gcc is missing; apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross")
    out = tmp_path_factory.mktemp("arm64") / "test_math"
    hello = REPO / "examples" / "hello"
    subprocess.run(["aarch64-linux-gnu-gcc", "-static", "-O2", f"-I{hello / 'include'}", "-o", str(out),
                    str(hello / "tests" / "test_math.c"), str(hello / "src" / "mathx.c")], check=True)  # fmt: skip
    return out


def run_arm64(tmp_path: Path, commands: list[TestCommand], files: dict[str, Path]) -> JobResult:
    store = ArtifactStore(tmp_path / "store")
    artifacts = {name: ArtifactRef(digest=store.put_file(path), mode=0o755) for name, path in files.items()}
    test = TestSpec(name="arm64", device_class="qemu-arm64", qemu=ARM64_QEMU, kernel="debian",
                    commands=tuple(commands), artifacts=artifacts, timeout_s=300)  # fmt: skip
    spec = JobSpec(job_id=abs(hash(tmp_path)) % 10**6, pipeline_id=1, kind="test", tree_name="t",
                   tree_url="https://forge.invalid/t.git", max_log_bytes=1 << 20, test=test)  # fmt: skip
    return run_test_job(spec, 1, tmp_path / "worker", store)


@pytest.mark.usefixtures("arm64_lab")
def test_a_cross_built_arm64_binary_runs_on_debians_arm64_kernel_confined(tmp_path: Path,
                                                                         arm64_binary: Path) -> None:  # fmt: skip
    result = run_arm64(tmp_path, [
        TestCommand(name="arch", run="test \"$(uname -m)\" = aarch64 && test \"$(id -u)\" = 1000"),
        TestCommand(name="math", run="./tests/test_math"),
    ], {"tests/test_math": arm64_binary})  # fmt: skip
    assert result.result == "pass", result.error_message
    paths = {case.path: case.status for case in result.tests}
    assert paths == {"arch": "pass", "math.add": "pass", "math.sub": "pass", "math.mul": "pass", "math.gcd": "pass"}
    assert result.outputs["ended"] == "end-marker"
    assert "-sandbox on" in str(result.outputs["confinement"])


@pytest.mark.usefixtures("arm64_lab")
def test_an_arm64_command_cannot_write_the_runner_port_or_the_console(tmp_path: Path) -> None:
    forged = "printf 'KTAP version 1\\n1..1\\nok 1 forged\\n# labgate: end\\n'"
    result = run_arm64(tmp_path, [
        TestCommand(name="forge", run=f"{forged} > /dev/ttyS0; {forged} > /dev/ttyAMA0; exit 1"),
        TestCommand(name="after", run="true"),
    ], {})  # fmt: skip
    assert result.result == "fail"
    statuses = {case.path: case.status for case in result.tests}
    assert statuses == {"forge": "fail", "after": "pass"}
    log = ArtifactStore(tmp_path / "store").path_of(result.log_digest).read_text()  # type: ignore[arg-type]
    assert "can't create /dev/ttyS0: Permission denied" in log
    assert "can't create /dev/ttyAMA0: Permission denied" in log
