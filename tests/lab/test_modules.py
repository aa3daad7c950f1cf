"""A build's modules on the DUT: the tarball's attacks refused member by member, and a real module loaded.

The tarball is the change's output (TestSpec.modules names it). Whatever it holds is unpacked by the
root-owned worker, so every way a tar member can reach outside lib/modules is an attack test here.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from lab.initramfs import build_initramfs
from lab.kernel import fetch_debian_busybox, fetch_debian_kernel
from lab.modules import ModulesError, unpack_modules
from tests.lab.test_initramfs import read_image
from tests.requirements import missing
from workers.artifacts import ArtifactStore
from workers.errors import UserError
from workers.spec import ArtifactRef, JobSpec, QemuSpec, TestCommand, TestSpec
from workers.testjob import run_test_job

RELEASE = "lib/modules/6.1.0-test"


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644,
           linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:  # fmt: skip
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.size = kind, mode, linkname, len(data)
    return info, data


def tarball(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], compression: str = "gz") -> Path:
    with tarfile.open(path, f"w:{compression}") as tar:  # type: ignore[call-overload]
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def good_members() -> list[tuple[tarfile.TarInfo, bytes]]:
    return [
        member("lib", tarfile.DIRTYPE, mode=0o755),
        member("lib/modules", tarfile.DIRTYPE, mode=0o755),
        member(RELEASE, tarfile.DIRTYPE, mode=0o755),
        member(f"{RELEASE}/kernel/drivers/net/dummy.ko", data=b"\x7fELF module"),
        member(f"{RELEASE}/modules.dep", data=b"kernel/drivers/net/dummy.ko:\n"),
        member(f"{RELEASE}/extra/alias.ko", tarfile.SYMTYPE, linkname="../kernel/drivers/net/dummy.ko"),
        # kbuild's links to the build tree: left out, not refused (a normal modules_install makes them).
        member(f"{RELEASE}/build", tarfile.SYMTYPE, linkname="/home/builder/linux"),
        member(f"{RELEASE}/source", tarfile.SYMTYPE, linkname="/home/builder/linux"),
    ]


def test_a_modules_tarball_is_unpacked_and_lands_under_lib_modules_in_the_image(tmp_path: Path) -> None:
    unpacked = unpack_modules(tarball(tmp_path / "m.tar.xz", good_members(), "xz"), tmp_path / "out")
    image = read_image(build_initramfs(tmp_path / "i.cpio.gz", {}, modules=unpacked))
    assert image[f"{RELEASE}/kernel/drivers/net/dummy.ko"].data == b"\x7fELF module"
    assert image[f"{RELEASE}/modules.dep"].data == b"kernel/drivers/net/dummy.ko:\n"
    link = image[f"{RELEASE}/extra/alias.ko"]
    assert stat.S_ISLNK(link.mode) and link.data == b"../kernel/drivers/net/dummy.ko"
    assert f"{RELEASE}/build" not in image and f"{RELEASE}/source" not in image


@pytest.mark.parametrize(("bad", "says"), [
    (member("/lib/modules/6.1.0-test/evil.ko", data=b"x"), "is absolute"),
    (member(f"{RELEASE}/../../../etc/passwd", data=b"root::0:0::/:/bin/sh\n"), "climbs with '..'"),
    (member("../../etc/cron.d/x", data=b"x"), "climbs with '..'"),
    (member("etc/passwd", data=b"x"), "outside lib/modules"),
    (member("lib/firmware/x.bin", data=b"x"), "outside lib/modules"),
    (member("labgate/runner-port", data=b"console\n"), "outside lib/modules"),
    (member(f"{RELEASE}/out", tarfile.SYMTYPE, linkname="/etc/shadow"), "absolute"),
    (member(f"{RELEASE}/out", tarfile.SYMTYPE, linkname="../../../etc"), "points out of lib/modules"),
    (member(f"{RELEASE}/extra/x", tarfile.SYMTYPE, linkname="../../../../root"), "points out of lib/modules"),
    (member(f"{RELEASE}/hard", tarfile.LNKTYPE, linkname="etc/shadow"), "hardlink"),
    (member(f"{RELEASE}/sda", tarfile.BLKTYPE), "device"),
    (member(f"{RELEASE}/mem", tarfile.CHRTYPE), "device"),
    (member(f"{RELEASE}/fifo", tarfile.FIFOTYPE), "FIFO"),
    (member(f"{RELEASE}/suid", data=b"x", mode=0o4755), "setuid"),
    (member(f"{RELEASE}/sgid", data=b"x", mode=0o2755), "setgid"),
])  # fmt: skip
def test_a_hostile_member_is_refused_by_name_and_nothing_lands_outside(
    tmp_path: Path, bad: tuple[tarfile.TarInfo, bytes], says: str
) -> None:
    with pytest.raises(ModulesError, match=says) as caught:
        unpack_modules(tarball(tmp_path / "m.tar.gz", [*good_members()[:4], bad]), tmp_path / "root" / "out")
    assert repr(bad[0].name)[1:-1] in str(caught.value) or bad[0].name in str(caught.value)
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["out"]  # nothing beside what we made


def test_a_link_inside_then_a_member_through_it_is_refused(tmp_path: Path) -> None:
    # The link itself stays inside lib/modules; a later member written through it would not be checked
    # against where the link really leads, so no member may lie below a link.
    members = [member(f"{RELEASE}/up", tarfile.SYMTYPE, linkname=".."),
               member(f"{RELEASE}/up/6.1.0-test/x.ko", data=b"x")]  # fmt: skip
    with pytest.raises(ModulesError, match="below a symlink"):
        unpack_modules(tarball(tmp_path / "m.tar", members, "gz"), tmp_path / "out")


def test_a_name_given_twice_is_refused(tmp_path: Path) -> None:
    members = [member(f"{RELEASE}/a.ko", data=b"one"),
               member(f"{RELEASE}/a.ko", tarfile.SYMTYPE, linkname="b.ko")]  # fmt: skip
    with pytest.raises(ModulesError, match="appears twice"):
        unpack_modules(tarball(tmp_path / "m.tar.gz", members), tmp_path / "out")


def test_a_tarball_past_the_size_cap_or_not_a_tarball_is_refused(tmp_path: Path) -> None:
    big = [member(f"{RELEASE}/a.ko", data=b"x" * 4096), member(f"{RELEASE}/b.ko", data=b"x" * 4096)]
    with pytest.raises(ModulesError, match="more than 0 MiB"):
        unpack_modules(tarball(tmp_path / "m.tar.gz", big), tmp_path / "out", max_bytes=6000)
    many = [member(f"{RELEASE}/{n}.ko", data=b"x") for n in range(5)]
    with pytest.raises(ModulesError, match="more than 3 members"):
        unpack_modules(tarball(tmp_path / "n.tar.gz", many), tmp_path / "out2", max_members=3)
    (tmp_path / "junk").write_bytes(b"not a tar" * 100)
    with pytest.raises(ModulesError, match="not a readable tar archive"):
        unpack_modules(tmp_path / "junk", tmp_path / "out3")


# --- through the test worker ---------------------------------------------------------------------


def needs_lab() -> None:
    if os.geteuid() != 0 or shutil.which("qemu-system-x86_64") is None:
        missing("the test worker needs root and QEMU; scripts/setup.sh installs them")


def job(store: ArtifactStore, modules: Path | None, commands: list[TestCommand], arch: str = "x86_64",
        name: str = "modules.tar.gz") -> JobSpec:  # fmt: skip
    artifacts = {name: ArtifactRef(digest=store.put_file(modules))} if modules is not None else {}
    qemu = QemuSpec(arch="arm64", machine="virt", cpu="cortex-a57") if arch == "arm64" else QemuSpec()
    test = TestSpec(name="mods", device_class=f"qemu-{arch}", qemu=qemu, kernel="debian", artifacts=artifacts,
                    modules="modules.tar.gz", commands=tuple(commands), timeout_s=300)  # fmt: skip
    return JobSpec(job_id=4242, pipeline_id=1, kind="test", tree_name="t", tree_url="https://forge.invalid/t.git",
                   max_log_bytes=1 << 20, test=test)  # fmt: skip


def test_a_hostile_modules_tarball_is_the_changes_error_before_any_boot(tmp_path: Path) -> None:
    needs_lab()
    store = ArtifactStore(tmp_path / "store")
    hostile = tarball(tmp_path / "m.tar.gz", [member(f"{RELEASE}/../../../../etc/x", data=b"x")])
    with pytest.raises(UserError, match="test mods: modules tarball: .* climbs with '..'"):
        run_test_job(job(store, hostile, []), 1, tmp_path / "worker", store)
    with pytest.raises(UserError, match="modules 'modules.tar.gz' is not an artifact of its build"):
        run_test_job(job(store, hostile, [], name="other.tar.gz"), 1, tmp_path / "worker", store)


def debian_modules_tarball(arch: str, tmp_path: Path) -> Path:
    """dummy.ko from the Debian package of the lab's kernel, with its modules.dep, as modules_install lays it out.

    Taken from the same package as the booted vmlinuz: a module loads only into its own kernel build."""
    cache = Path(os.environ.get("LABGATE_CACHE_DIR", "~/.cache/labgate")).expanduser()
    kernel = fetch_debian_kernel(cache / "kernel", arch=arch)
    fetch_debian_busybox(cache / "busybox", arch)
    release = kernel.name.removeprefix("vmlinuz-")
    debian_arch = "arm64" if arch == "arm64" else "amd64"
    download = tmp_path / "deb"
    download.mkdir()
    subprocess.run(["apt-get", "download", f"linux-image-{release}:{debian_arch}"], cwd=download, check=True,
                   capture_output=True)  # fmt: skip
    (deb,) = download.glob("*.deb")
    root = tmp_path / "root"
    root.mkdir()
    wanted = f"./lib/modules/{release}/kernel/drivers/net/dummy.ko"
    subprocess.run(f"dpkg-deb --fsys-tarfile {deb} | tar -x -C {root} {wanted}", shell=True, check=True)
    subprocess.run(["depmod", "-b", str(root), release], check=True)  # what modules_install runs
    out = tmp_path / "modules.tar.gz"
    subprocess.run(["tar", "-czf", str(out), "-C", str(root), "lib"], check=True)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_a_module_from_the_tarball_loads_on_a_real_boot_of_its_kernel(tmp_path: Path, arch: str) -> None:
    needs_lab()
    if shutil.which("apt-get") is None or shutil.which("depmod") is None:
        missing("apt-get and depmod (kmod) are needed to take dummy.ko from Debian's kernel package")
    store = ArtifactStore(tmp_path / "store")
    modules = debian_modules_tarball(arch, tmp_path)
    result = run_test_job(job(store, modules, [
        TestCommand(name="modprobe", run="modprobe dummy && test -d /sys/module/dummy && ip link show dummy0",
                    root=True),  # loading a module is root's
        TestCommand(name="insmod", run="rmmod dummy && insmod /lib/modules/$(uname -r)/kernel/drivers/net/dummy.ko"
                    " && grep -q '^dummy ' /proc/modules", root=True),
        TestCommand(name="unprivileged", run="! insmod /lib/modules/$(uname -r)/kernel/drivers/net/dummy.ko"),
    ], arch), 1, tmp_path / "worker", store)  # fmt: skip
    log = store.path_of(result.log_digest).read_text()  # type: ignore[arg-type]
    assert result.result == "pass", log[-3000:]
    assert {case.path: case.status for case in result.tests} == {"modprobe": "pass", "insmod": "pass",
                                                                 "unprivileged": "pass"}  # fmt: skip
