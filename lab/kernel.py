"""Fetch the lab's stock boot inputs: Debian's vmlinuz per arch, a foreign arch's busybox; unpacked, never installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from lab.arch import Arch, arch_named
from lab.errors import LabSetupError

__all__ = ["KERNEL_ENV", "LabSetupError", "fetch_debian_busybox", "fetch_debian_kernel", "kernel_env",
           "parse_image_dependency"]  # fmt: skip

KERNEL_ENV = "LABGATE_KERNEL"  # x86_64's; other arches add _<ARCH> (LABGATE_KERNEL_ARM64)
BUSYBOX_ENV = "LABGATE_BUSYBOX"  # likewise: LABGATE_BUSYBOX_ARM64
METAPACKAGE = "linux-image-amd64"
HOST_BUSYBOX = Path("/bin/busybox")  # busybox-static, installed on the host (x86_64)
_CURRENT = "CURRENT"  # names the unpacked package directory that the fast path returns
_IMAGE_PACKAGE = re.compile(r"^\s*\|?Depends:\s*<?(linux-image-[A-Za-z0-9.+~-]+)(?::[a-z0-9]+)?>?\s*$", re.M)


def kernel_env(arch: str = "x86_64") -> str:
    """The variable naming an explicit kernel image for this arch."""
    return KERNEL_ENV if arch == "x86_64" else f"{KERNEL_ENV}_{arch.upper()}"


def fetch_debian_kernel(cache_dir: Path, *, refresh: bool = False, arch: str = "x86_64") -> Path:
    """Return a Debian vmlinuz for ``arch``, downloading and unpacking it into cache_dir once.

    ``$LABGATE_KERNEL`` (``$LABGATE_KERNEL_ARM64``: an explicit path) wins. Otherwise the package
    that ``linux-image-amd64`` (``linux-image-arm64``) depends on is fetched with ``apt-get
    download`` and only its ``boot/`` is unpacked to ``cache_dir/<package>/root/boot/``. Later
    calls return the cached file without asking apt, unless ``refresh`` asks to re-resolve the
    package. A foreign arch needs `dpkg --add-architecture` and `apt-get update` first (setup.sh).
    """
    profile = arch_named(arch)
    env = kernel_env(arch)
    explicit = _explicit(env, "a bzImage, Image or vmlinuz, or unset it to use Debian's kernel")
    if explicit is not None:
        return explicit
    cache_dir = Path(cache_dir).expanduser().resolve()
    current = cache_dir / (_CURRENT if arch == "x86_64" else f"{_CURRENT}-{arch}")
    if not refresh:
        cached = _cached(current, _find_vmlinuz)
        if cached is not None:
            return cached
    metapackage = f"{profile.image_metapackage}:{profile.debian_arch}"
    package = parse_image_dependency(_run(["apt-cache", "depends", metapackage], cwd=None, env=env),
                                     profile.image_metapackage)  # fmt: skip
    kernel = _find_vmlinuz(cache_dir / package)
    if kernel is None:
        kernel = _download_and_unpack(cache_dir, package, profile, "./boot/*", _find_vmlinuz, env)
    _write_atomically(current, package + "\n")
    return kernel


def fetch_debian_busybox(cache_dir: Path, arch: str = "x86_64") -> Path:
    """A static busybox for ``arch``'s initramfs: the host's /bin/busybox on x86_64, else Debian's
    busybox-static:<arch> unpacked (never installed over the host's) to cache_dir/<package>/root/bin/."""
    profile = arch_named(arch)
    env = BUSYBOX_ENV if arch == "x86_64" else f"{BUSYBOX_ENV}_{arch.upper()}"
    explicit = _explicit(env, f"a static {arch} busybox")
    if explicit is not None:
        return explicit
    if arch == "x86_64":
        return HOST_BUSYBOX
    cache_dir = Path(cache_dir).expanduser().resolve()
    package = f"busybox-static-{profile.debian_arch}"  # the directory; apt's name is busybox-static:<arch>
    found = _find_busybox(cache_dir / package)
    if found is not None:
        return found
    return _download_and_unpack(cache_dir, package, profile, "./bin/busybox", _find_busybox, env,
                                apt_name="busybox-static")  # fmt: skip


def _explicit(env: str, what: str) -> Path | None:
    explicit = os.environ.get(env)
    if not explicit:
        return None
    path = Path(explicit).expanduser()
    if not path.is_file():
        raise LabSetupError(f"${env} is {explicit!r}, which is not a file; point it at {what}")
    return path.resolve()


def parse_image_dependency(apt_cache_depends: str, metapackage: str = METAPACKAGE) -> str:
    """The real image package (``linux-image-6.1.0-56-amd64``) from ``apt-cache depends``."""
    for match in _IMAGE_PACKAGE.finditer(apt_cache_depends):
        if match.group(1) != metapackage:
            return match.group(1)
    raise LabSetupError(
        f"`apt-cache depends {metapackage}` names no linux-image-* package:\n"
        f"{apt_cache_depends.strip()[:500]}\n"
        f"fix: run `apt-get update` (is the Debian main archive in sources.list?), "
        f"or set ${KERNEL_ENV} to a kernel image"
    )


def _cached(current: Path, find: Callable[[Path], Path | None]) -> Path | None:
    try:
        package = current.read_text().strip()
    except OSError:
        return None
    if not package or "/" in package:
        return None
    return find(current.parent / package)


def _find_vmlinuz(package_dir: Path) -> Path | None:
    found = sorted((package_dir / "root" / "boot").glob("vmlinuz-*"))
    return found[-1] if found else None


def _find_busybox(package_dir: Path) -> Path | None:
    found = package_dir / "root" / "bin" / "busybox"
    return found if found.is_file() else None


def _download_and_unpack(cache_dir: Path, package: str, arch: Arch, member: str, find: Callable[[Path], Path | None],
                         env: str, apt_name: str | None = None) -> Path:  # fmt: skip
    """`apt-get download` the package for ``arch`` and unpack only ``member`` (a tar wildcard) of it."""
    apt_name = apt_name or package
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{package}.", dir=cache_dir))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the kernel from other lab users
    try:
        _run(["apt-get", "download", f"{apt_name}:{arch.debian_arch}"], cwd=staging, env=env)
        debs = sorted(staging.glob(f"{apt_name}_*.deb"))
        if not debs:
            raise LabSetupError(
                f"`apt-get download {apt_name}:{arch.debian_arch}` left no .deb in {staging}; "
                f"fix: check apt's sources, or set ${env}"
            )
        root = staging / "root"
        root.mkdir()
        # Only what is asked (boot/, bin/busybox): skipping the ~400 MB of modules keeps the cache small.
        _run_pipe_to_tar(debs[-1], root, member, env)
        debs[-1].unlink()
        if find(staging) is None:
            raise LabSetupError(f"{apt_name}:{arch.debian_arch} holds no {member}; set ${env} instead")
        try:
            staging.rename(cache_dir / package)
        except OSError:
            # Another process unpacked the same package first; theirs is as good as ours.
            if find(cache_dir / package) is None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    found = find(cache_dir / package)
    assert found is not None
    return found


def _run_pipe_to_tar(deb: Path, root: Path, member: str, env: str) -> None:
    for tool in ("dpkg-deb", "tar"):
        if shutil.which(tool) is None:
            raise LabSetupError(f"`{tool}` not found; install dpkg and tar, or set ${env}")
    deb_proc = subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert deb_proc.stdout is not None
    tar = subprocess.run(
        ["tar", "-x", "-C", str(root), "--wildcards", member],
        stdin=deb_proc.stdout,
        capture_output=True,
        text=True,
    )
    deb_proc.stdout.close()
    _, deb_err = deb_proc.communicate()
    if deb_proc.returncode != 0 or tar.returncode != 0:
        raise LabSetupError(
            f"unpacking {deb.name} failed (dpkg-deb rc {deb_proc.returncode}, tar rc "
            f"{tar.returncode}): {deb_err.decode(errors='replace').strip()} {tar.stderr.strip()}"
            f"; fix: delete {deb.parent} and retry, or set ${env}"
        )


def _run(argv: list[str], cwd: Path | None, env: str = KERNEL_ENV) -> str:
    if shutil.which(argv[0]) is None:
        raise LabSetupError(
            f"`{argv[0]}` not found: fetching Debian's kernel needs apt (a Debian or Ubuntu host); elsewhere set ${env}"
        )
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as exc:
        raise LabSetupError(f"`{' '.join(argv)}` took over 600 s; check the network") from exc
    if done.returncode != 0:
        raise LabSetupError(
            f"`{' '.join(argv)}` failed with exit status {done.returncode}: "
            f"{done.stderr.strip()[-800:]}\nfix: run `apt-get update` and check the network "
            f"and apt sources (a foreign arch: `dpkg --add-architecture`), or set ${env}"
        )
    return done.stdout


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
