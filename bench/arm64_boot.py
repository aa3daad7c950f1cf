"""Benchmark: the example's test programs cross-built for arm64 and booted on Debian's arm64 kernel, beside x86_64.

Per round, alternating arches, each boot a confined test job through workers/testjob.run_test_job (slot
uid, cgroup, bwrap, seccomp, `-sandbox on`, no NIC) with examples/hello's three test programs:

- build: `make` of examples/hello with aarch64-linux-gnu-gcc (arm64) and gcc (x86_64), static;
- boot: the job's boot_s (QEMU started to the runner's end marker) and its whole wall time;
  arm64 is qemu-system-aarch64 -M virt -cpu cortex-a57, x86_64 qemu-system-x86_64 -M q35 -cpu qemu64, TCG.

With --kernel, also a Linux 6.1 tinyconfig per arch with KUnit and its example suites built in (arm64:
virt's PL011 console and the runner's PCI 16550, cross-built; x86_64: examples/linux/boot.config), built
one after the other from a clone of /work/linux-tree and booted with `kunit`: the KUnit suites relayed
from debugfs are counted (issue 11 point 4 on both arches). Never run it beside another kernel build on
a 2-core machine.

    .venv/bin/python bench/arm64_boot.py [--rounds 3] [--kernel]

Last line: {"bench": "arm64_boot", "figures": {...}, "targets": {}}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workers.artifacts import ArtifactStore  # noqa: E402
from workers.spec import ArtifactRef, JobResult, JobSpec, QemuSpec, TestCommand, TestSpec  # noqa: E402
from workers.testjob import run_test_job  # noqa: E402

HELLO = REPO / "examples" / "hello"
LINUX_TREE = Path(os.environ.get("LABGATE_LINUX_TREE", "/work/linux-tree"))
QEMU = {"arm64": QemuSpec(arch="arm64", machine="virt", cpu="cortex-a57"), "x86_64": QemuSpec()}
CC = {"arm64": ["CC=aarch64-linux-gnu-gcc", "AR=aarch64-linux-gnu-ar"], "x86_64": []}
PROGRAMS = ("test_math", "test_strings", "test_skip")
KUNIT = "CONFIG_DEBUG_FS=y\nCONFIG_KUNIT=y\nCONFIG_KUNIT_DEBUGFS=y\nCONFIG_KUNIT_EXAMPLE_TEST=y\n"
# tinyconfig plus what the lab's arm64 boot needs: virt's PL011 console, PCIe with the 16550 the runner
# speaks on, an initramfs of static binaries, users for the DUT user.
ARM64_TINY = """CONFIG_PRINTK=y
CONFIG_TTY=y
CONFIG_SERIAL_AMBA_PL011=y
CONFIG_SERIAL_AMBA_PL011_CONSOLE=y
CONFIG_PCI=y
CONFIG_PCI_HOST_GENERIC=y
CONFIG_SERIAL_8250=y
CONFIG_SERIAL_8250_PCI=y
CONFIG_BLK_DEV_INITRD=y
CONFIG_RD_GZIP=y
CONFIG_BINFMT_ELF=y
CONFIG_BINFMT_SCRIPT=y
CONFIG_DEVTMPFS=y
CONFIG_DEVTMPFS_MOUNT=y
CONFIG_PROC_FS=y
CONFIG_SYSFS=y
CONFIG_FUTEX=y
CONFIG_POSIX_TIMERS=y
CONFIG_MULTIUSER=y
"""
TINY = {
    "arm64": (ARM64_TINY, "CROSS_COMPILE=aarch64-linux-gnu-", "Image", "arch/arm64/boot/Image"),
    "x86_64": ((REPO / "examples/linux/boot.config").read_text(), "CC=gcc", "bzImage", "arch/x86/boot/bzImage"),
}


def build_hello(arch: str, out: Path) -> float:
    started = time.monotonic()
    subprocess.run(["make", "-s", f"O={out}", "-j2", *CC[arch]], cwd=HELLO, check=True)
    return time.monotonic() - started


def job(tmp: Path, name: str, arch: str, store: ArtifactStore, artifacts: dict[str, ArtifactRef], kernel: str,
        commands: tuple[TestCommand, ...], kunit: bool = False) -> tuple[JobResult, float]:  # fmt: skip
    test = TestSpec(name=name, device_class=f"qemu-{arch}", qemu=QEMU[arch], kernel=kernel, artifacts=artifacts,
                    commands=commands, kunit=kunit, timeout_s=600)  # fmt: skip
    spec = JobSpec(job_id=abs(hash((tmp, name))) % 10**6, pipeline_id=1, kind="test", tree_name="bench",
                   tree_url="https://forge.invalid/bench.git", max_log_bytes=1 << 22, test=test)  # fmt: skip
    started = time.monotonic()
    result = run_test_job(spec, 1, tmp / "worker", store)
    return result, time.monotonic() - started


def hello_boot(tmp: Path, arch: str, store: ArtifactStore, build: Path) -> tuple[float, float]:
    artifacts = {f"tests/{p}": ArtifactRef(digest=store.put_file(build / "tests" / p), mode=0o755) for p in PROGRAMS}
    commands = tuple(TestCommand(name=p.removeprefix("test_"), run=f"./tests/{p}") for p in PROGRAMS)
    result, wall = job(tmp, f"hello-{arch}", arch, store, artifacts, "debian", commands)
    if result.result != "pass":
        raise SystemExit(f"{arch} boot did not pass: {result.result} {result.error_code} {result.error_message}")
    return float(result.outputs["boot_s"]), wall  # type: ignore[arg-type]


def tiny_kernel(tmp: Path, arch: str) -> tuple[Path, float]:
    """A tinyconfig image for the lab's boot with KUnit built in, and its build's wall time (no ccache)."""
    fragment, compiler, target, image = TINY[arch]
    src, out = tmp / "linux", tmp / f"linux-{arch}"
    if not src.exists():
        subprocess.run(["git", "clone", "-q", "--shared", str(LINUX_TREE), str(src)], check=True)
    make = ["make", "-s", f"O={out}", f"ARCH={arch}", compiler]
    started = time.monotonic()
    subprocess.run([*make, "tinyconfig"], cwd=src, check=True)
    (tmp / f"{arch}-boot.config").write_text(fragment + KUNIT)
    subprocess.run([str(src / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(out), str(out / ".config"),
                    str(tmp / f"{arch}-boot.config")], cwd=src, check=True, capture_output=True)  # fmt: skip
    subprocess.run([*make, "olddefconfig"], cwd=src, check=True)
    subprocess.run([*make, "-j2", target], cwd=src, check=True)
    return out / image, time.monotonic() - started


def kunit_boot(tmp: Path, arch: str, store: ArtifactStore, figures: dict[str, float | int | str]) -> None:
    image, build_s = tiny_kernel(tmp, arch)
    name = TINY[arch][3]
    artifacts = {name: ArtifactRef(digest=store.put_file(image))}
    uname = (TestCommand(name="uname", run="uname -m"),)
    result, wall = job(tmp / f"tiny-{arch}", f"tiny-{arch}", arch, store, artifacts, name, uname, kunit=True)
    # The runner relays each debugfs suite as test kunit-<suite>, its KTAP nested below: the cases are the leaves.
    cases = [c for c in result.tests if c.path.startswith("kunit-") and "." in c.path]
    suites = sorted({c.path.split(".", 1)[0] for c in cases})
    figures.update({f"{arch}_tinyconfig_build_s": round(build_s, 1), f"{arch}_tinyconfig_result": str(result.result),
                    f"{arch}_tinyconfig_boot_s": float(result.outputs.get("boot_s", 0)),  # type: ignore[arg-type]
                    f"{arch}_tinyconfig_job_s": round(wall, 2), f"{arch}_kunit_suites": len(suites),
                    f"{arch}_kunit_cases": len(cases)})  # fmt: skip
    print(
        f"{arch} tinyconfig: {result.result} {result.error_message or ''}; KUnit suites {suites}; "
        f"cases {[(c.path, c.status) for c in cases]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kernel", action="store_true", help="also cross-build and boot an arm64 tinyconfig")
    args = parser.parse_args()
    figures: dict[str, float | int | str] = {}
    with tempfile.TemporaryDirectory(prefix="arm64-bench-") as name:
        tmp = Path(name)
        store = ArtifactStore(tmp / "store")
        builds = {arch: tmp / f"hello-{arch}" for arch in QEMU}
        for arch, out in builds.items():
            figures[f"{arch}_hello_build_s"] = round(build_hello(arch, out), 2)
        boots: dict[str, list[tuple[float, float]]] = {arch: [] for arch in QEMU}
        for round_ in range(args.rounds):
            for arch in ("arm64", "x86_64") if round_ % 2 == 0 else ("x86_64", "arm64"):
                boots[arch].append(hello_boot(tmp / f"r{round_}-{arch}", arch, store, builds[arch]))
                print(f"round {round_ + 1} {arch}: boot {boots[arch][-1][0]:.2f} s, job {boots[arch][-1][1]:.2f} s")
        for arch, got in boots.items():
            figures[f"{arch}_boot_s"] = round(statistics.median(b for b, _ in got), 2)
            figures[f"{arch}_job_s"] = round(statistics.median(w for _, w in got), 2)
        figures["arm64_over_x86_boot"] = round(float(figures["arm64_boot_s"]) / float(figures["x86_64_boot_s"]), 3)
        if args.kernel:
            for arch in QEMU:
                kunit_boot(tmp, arch, store, figures)
    for key, value in figures.items():
        print(f"{key}: {value}")
    print(json.dumps({"bench": "arm64_boot", "figures": figures, "targets": {}}))


if __name__ == "__main__":
    main()
