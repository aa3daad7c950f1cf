"""Fetch the lab's stock kernel: Debian's x86_64 vmlinuz, unpacked without installing it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from lab.errors import LabSetupError

__all__ = ["KERNEL_ENV", "LabSetupError", "fetch_debian_kernel", "parse_image_dependency"]

KERNEL_ENV = "LABGATE_KERNEL"
METAPACKAGE = "linux-image-amd64"
_CURRENT = "CURRENT"  # names the unpacked package directory that the fast path returns
_IMAGE_PACKAGE = re.compile(r"^\s*\|?Depends:\s*<?(linux-image-[A-Za-z0-9.+~-]+)>?\s*$", re.M)


def fetch_debian_kernel(cache_dir: Path, *, refresh: bool = False) -> Path:
    """Return a Debian x86_64 vmlinuz, downloading and unpacking it into cache_dir once.

    ``$LABGATE_KERNEL`` (an explicit path) wins. Otherwise the package that
    ``linux-image-amd64`` depends on is fetched with ``apt-get download`` and only its
    ``boot/`` is unpacked to ``cache_dir/<package>/root/boot/``. Later calls return the
    cached file without asking apt, unless ``refresh`` asks to re-resolve the package.
    """
    explicit = os.environ.get(KERNEL_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise LabSetupError(
                f"${KERNEL_ENV} is {explicit!r}, which is not a file; point it at a bzImage"
                " or vmlinuz, or unset it to use Debian's kernel"
            )
        return path.resolve()
    cache_dir = Path(cache_dir).expanduser().resolve()
    if not refresh:
        cached = _cached_kernel(cache_dir)
        if cached is not None:
            return cached
    package = parse_image_dependency(_run(["apt-cache", "depends", METAPACKAGE], cwd=None))
    kernel = _find_vmlinuz(cache_dir / package)
    if kernel is None:
        kernel = _download_and_unpack(cache_dir, package)
    _write_atomically(cache_dir / _CURRENT, package + "\n")
    return kernel


def parse_image_dependency(apt_cache_depends: str) -> str:
    """The real image package (``linux-image-6.1.0-56-amd64``) from ``apt-cache depends``."""
    for match in _IMAGE_PACKAGE.finditer(apt_cache_depends):
        if match.group(1) != METAPACKAGE:
            return match.group(1)
    raise LabSetupError(
        f"`apt-cache depends {METAPACKAGE}` names no linux-image-* package:\n"
        f"{apt_cache_depends.strip()[:500]}\n"
        f"fix: run `apt-get update` (is the Debian main archive in sources.list?), "
        f"or set ${KERNEL_ENV} to a kernel image"
    )


def _cached_kernel(cache_dir: Path) -> Path | None:
    try:
        package = (cache_dir / _CURRENT).read_text().strip()
    except OSError:
        return None
    if not package or "/" in package:
        return None
    return _find_vmlinuz(cache_dir / package)


def _find_vmlinuz(package_dir: Path) -> Path | None:
    found = sorted((package_dir / "root" / "boot").glob("vmlinuz-*"))
    return found[-1] if found else None


def _download_and_unpack(cache_dir: Path, package: str) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{package}.", dir=cache_dir))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the kernel from other lab users
    try:
        _run(["apt-get", "download", package], cwd=staging)
        debs = sorted(staging.glob(f"{package}_*.deb"))
        if not debs:
            raise LabSetupError(
                f"`apt-get download {package}` left no .deb in {staging}; "
                f"fix: check apt's sources, or set ${KERNEL_ENV} to a kernel image"
            )
        root = staging / "root"
        root.mkdir()
        # Only boot/ is needed: skipping the ~400 MB of modules keeps the cache small.
        _run_pipe_to_tar(debs[-1], root)
        debs[-1].unlink()
        if _find_vmlinuz(staging) is None:
            raise LabSetupError(f"{package} holds no boot/vmlinuz-*; set ${KERNEL_ENV} instead")
        try:
            staging.rename(cache_dir / package)
        except OSError:
            # Another process unpacked the same package first; theirs is as good as ours.
            if _find_vmlinuz(cache_dir / package) is None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    kernel = _find_vmlinuz(cache_dir / package)
    assert kernel is not None
    return kernel


def _run_pipe_to_tar(deb: Path, root: Path) -> None:
    for tool in ("dpkg-deb", "tar"):
        if shutil.which(tool) is None:
            raise LabSetupError(f"`{tool}` not found; install dpkg and tar, or set ${KERNEL_ENV}")
    deb_proc = subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert deb_proc.stdout is not None
    tar = subprocess.run(
        ["tar", "-x", "-C", str(root), "--wildcards", "./boot/*"],
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
            f"; fix: delete {deb.parent} and retry, or set ${KERNEL_ENV}"
        )


def _run(argv: list[str], cwd: Path | None) -> str:
    if shutil.which(argv[0]) is None:
        raise LabSetupError(
            f"`{argv[0]}` not found: fetching Debian's kernel needs apt (a Debian or Ubuntu "
            f"host); elsewhere set ${KERNEL_ENV} to a kernel image"
        )
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as exc:
        raise LabSetupError(f"`{' '.join(argv)}` took over 600 s; check the network") from exc
    if done.returncode != 0:
        raise LabSetupError(
            f"`{' '.join(argv)}` failed with exit status {done.returncode}: "
            f"{done.stderr.strip()[-800:]}\nfix: run `apt-get update` and check the network "
            f"and apt sources, or set ${KERNEL_ENV} to a kernel image"
        )
    return done.stdout


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
