"""A kernel that crashes on request: tinyconfig + lab/kconfig/lkdtm.config, booted to provoke real crash reports.

The console watcher's test data comes from here (tests/lab/data/consoles/README.md says how):
Debian's linux-source-6.1 built once into a cache, booted through lab.runner with the lab's
own initramfs, and one DUT command run as root that writes an LKDTM crash type into
/sys/kernel/debug/provoke-crash/DIRECT. `python -m tests.lab.lkdtm_kernel DEST` rewrites
the committed consoles; the slow test in tests/lab/test_console.py does the same live.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lab.initramfs import Command, build_initramfs
from lab.kernel import fetch_debian_kernel
from lab.runner import BootOutcome, BootRequest, run_boot

REPO = Path(__file__).resolve().parents[2]
FRAGMENT = REPO / "lab" / "kconfig" / "lkdtm.config"
LINUX_SOURCE = Path("/usr/src/linux-source-6.1.tar.xz")
CACHE = Path(os.environ.get("LABGATE_TEST_CACHE", "~/.cache/labgate-test")).expanduser() / "lkdtm-kernel"
# Hung tasks are reported after 2 s instead of 120 s, soft lockups after 2 s (twice watchdog_thresh).
BOOT_ARGS = "console=ttyS0 panic=-1 sysctl.kernel.hung_task_timeout_secs=2 watchdog_thresh=1"
_MOUNT_DEBUGFS = "mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null; "


@dataclass(frozen=True)
class Provocation:
    """One boot: a DUT command (as root) that makes the kernel crash, and the boot's wall-time cap."""

    name: str  # file stem under tests/lab/data/consoles/
    run: str
    timeout_s: float


def _lkdtm(crash_type: str, *, loglevel: int | None = None) -> str:
    # The lab's /init keeps the console at log level 5, which hides KERN_INFO lines: a hung
    # task's call trace is printed at that level, so that provocation raises it first.
    level = f"echo {loglevel} > /proc/sys/kernel/printk; " if loglevel is not None else ""
    return f"{level}{_MOUNT_DEBUGFS}echo {crash_type} > /sys/kernel/debug/provoke-crash/DIRECT"


PROVOCATIONS = (
    Provocation("lkdtm-clean", _MOUNT_DEBUGFS + "ls /sys/kernel/debug/provoke-crash", 60),
    Provocation("lkdtm-panic", _lkdtm("PANIC"), 60),
    Provocation("lkdtm-oops", _lkdtm("EXCEPTION"), 60),
    Provocation("lkdtm-bug", _lkdtm("BUG"), 60),
    Provocation("lkdtm-warning", _lkdtm("WARNING"), 60),
    Provocation("lkdtm-hung-task", _lkdtm("HUNG_TASK", loglevel=7), 20),
    Provocation("lkdtm-soft-lockup", _lkdtm("SOFTLOCKUP"), 20),
)


def _source_key() -> str:
    stat = LINUX_SOURCE.stat()
    return hashlib.sha256(f"{LINUX_SOURCE}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def cache_dir(root: Path = CACHE) -> Path:
    """The build directory for this fragment and this source tarball (a change to either rebuilds)."""
    key = hashlib.sha256(FRAGMENT.read_bytes() + _source_key().encode())
    return root / f"build-{key.hexdigest()[:16]}"


def source_dir(root: Path = CACHE) -> Path:
    """The unpacked source tree, shared by every fragment's build."""
    return root / f"source-{_source_key()}" / "linux-source-6.1"


def build_kernel(root: Path = CACHE, jobs: int | None = None) -> Path:
    """The bzImage, built once per fragment and source into ``root`` (a few minutes on 2 CPUs)."""
    work = cache_dir(root)
    image = work / "bzImage"
    if image.is_file():
        return image
    if not LINUX_SOURCE.is_file():
        raise FileNotFoundError(f"{LINUX_SOURCE} is missing: apt-get install linux-source-6.1")
    source, build = source_dir(root), work / "build"
    if not (source / "Makefile").is_file():
        shutil.rmtree(source.parent, ignore_errors=True)
        source.parent.mkdir(parents=True)
        _run(["tar", "-xf", str(LINUX_SOURCE), "-C", str(source.parent)], source.parent)
    build.mkdir(parents=True, exist_ok=True)
    make = ["make", "-s", f"O={build}", "ARCH=x86_64"]
    _run([*make, "tinyconfig"], source)
    # merge_config.sh writes its temporary files into the current directory: the build dir.
    _run([str(source / "scripts" / "kconfig" / "merge_config.sh"), "-m", "-O", str(build),
          str(build / ".config"), str(FRAGMENT)], build)  # fmt: skip
    _run([*make, "olddefconfig"], source)
    config = (build / ".config").read_text()
    wanted = [line.split("=")[0] for line in FRAGMENT.read_text().splitlines() if line.startswith("CONFIG_")]
    lost = [option for option in wanted if f"\n{option}=y\n" not in f"\n{config}"]
    if lost:  # a dependency that is not met turns an option off without a word
        raise RuntimeError(f"olddefconfig dropped {', '.join(lost)} from {FRAGMENT}")
    _run([*make, f"-j{jobs or os.cpu_count() or 1}", "bzImage"], source)
    built = build / "arch" / "x86" / "boot" / "bzImage"
    partial = image.with_suffix(".partial")
    shutil.copyfile(built, partial)
    partial.replace(image)
    return image


def kernel_release(root: Path = CACHE) -> str:
    """The built kernel's release string (`make kernelrelease`), for the data's README."""
    done = subprocess.run(["make", "-s", f"O={cache_dir(root) / 'build'}", "ARCH=x86_64", "kernelrelease"],
                          cwd=source_dir(root), capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout.strip()


def provoke(kernel: Path, provocation: Provocation, work_dir: Path) -> BootOutcome:
    """Boot the kernel once through lab.runner with the provocation as its one root command."""
    work_dir.mkdir(parents=True, exist_ok=True)
    initramfs = build_initramfs(work_dir / "initramfs.cpio.gz", {},
                                commands=[Command(provocation.name, provocation.run, root=True)])  # fmt: skip
    return run_boot(BootRequest(kernel=kernel, initramfs=initramfs, work_dir=work_dir,
                                timeout_s=provocation.timeout_s, memory="256M", boot_args=BOOT_ARGS))  # fmt: skip


def boot_debian(work_dir: Path) -> BootOutcome:
    """A clean boot of Debian's stock kernel (as the lab boots it) with one harmless command."""
    kernel = fetch_debian_kernel(CACHE.parent / "kernel")
    work_dir.mkdir(parents=True, exist_ok=True)
    initramfs = build_initramfs(work_dir / "initramfs.cpio.gz", {}, commands=[Command("version", "cat /proc/version")])
    return run_boot(BootRequest(kernel=kernel, initramfs=initramfs, work_dir=work_dir, timeout_s=120))


def _run(argv: list[str], cwd: Path) -> None:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="where the consoles go (tests/lab/data/consoles)")
    parser.add_argument("--work", type=Path, default=CACHE / "boots")
    parser.add_argument("--only", nargs="*", help="provocation names (default: all)")
    parser.add_argument("--debian-only", action="store_true", help="only the clean boot of Debian's kernel")
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    if args.debian_only:
        outcome = boot_debian(args.work / "debian-clean")
        (args.dest / "debian-clean.log").write_text(outcome.console)
        print(f"debian-clean: ended {outcome.ended}, {len(outcome.console)} bytes", file=sys.stderr)
        return 0
    kernel = build_kernel()
    print(f"kernel {kernel} ({kernel_release()})", file=sys.stderr)
    for provocation in PROVOCATIONS:
        if args.only and provocation.name not in args.only:
            continue
        outcome = provoke(kernel, provocation, args.work / provocation.name)
        (args.dest / f"{provocation.name}.log").write_text(outcome.console)
        print(f"{provocation.name}: ended {outcome.ended} after {outcome.boot_s:.1f} s, "
              f"{len(outcome.console)} bytes", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
