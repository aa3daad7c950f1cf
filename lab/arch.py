"""What differs between the architectures the lab boots under QEMU: binary, consoles, Debian names.

Everything else about a boot (confinement, caps, the TCG buffer, no NIC) is the same for every
arch and lives once in lab/runner.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from lab.errors import LabSetupError

__all__ = ["ARCHES", "Arch", "arch_named"]


@dataclass(frozen=True)
class Arch:
    name: str  # labgate's name (QemuSpec.arch, plan tags)
    qemu: str  # the QEMU system emulator on PATH
    qemu_package: str  # the apt package holding it (for the error that says what to install)
    console: str  # the kernel's console device (console=...): QEMU's first serial port
    # The DUT runner's own port: the QEMU device added for the chardev "runner", and its device node
    # on the target (/dev/<runner_port>). Never the console: the change's commands cannot write to it.
    runner_device: str
    runner_port: str
    debian_arch: str  # dpkg's name for it (apt-get download PACKAGE:ARCH)
    image_metapackage: str  # Debian's kernel metapackage; it depends on the current image package


ARCHES: dict[str, Arch] = {
    "x86_64": Arch(
        name="x86_64", qemu="qemu-system-x86_64", qemu_package="qemu-system-x86", console="ttyS0",
        # labgrid appends its own `-serial` for the console after extra_args: that becomes ttyS0, and
        # this explicit index keeps the runner's port at ttyS1 (I/O 0x2f8).
        runner_device="isa-serial,chardev=runner,index=1", runner_port="ttyS1",
        debian_arch="amd64", image_metapackage="linux-image-amd64",
    ),
    "arm64": Arch(
        name="arm64", qemu="qemu-system-aarch64", qemu_package="qemu-system-arm", console="ttyAMA0",
        # The virt machine has one PL011 for the normal world (QEMU 7.2; a second came in 10.0), and
        # virtio-console is a module in Debian's arm64 kernel (the initramfs would have to load it
        # before the runner could speak). A 16550 on PCI is built in (SERIAL_8250_PCI, default y
        # with SERIAL_8250, and PCI_HOST_GENERIC is in defconfig): the first 8250, ttyS0.
        runner_device="pci-serial,chardev=runner", runner_port="ttyS0",
        debian_arch="arm64", image_metapackage="linux-image-arm64",
    ),
}  # fmt: skip


def arch_named(name: str) -> Arch:
    """The lab's profile of an arch, or a LabSetupError naming the ones it knows."""
    try:
        return ARCHES[name]
    except KeyError:
        raise LabSetupError(f"arch {name!r} is not one the lab boots (known: {', '.join(sorted(ARCHES))})") from None
