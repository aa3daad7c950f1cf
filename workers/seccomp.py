"""The build sandbox's seccomp filter: a short deny list, assembled as classic BPF for bwrap --seccomp.

Why a deny list and these entries: the build already runs as an unprivileged uid with no
capabilities and no_new_privs, so the kernel refuses it mount, module loading, reboot and the
like. What an unprivileged process can still reach, and a build never needs, is the kernel's
largest attack surface: creating a user namespace (which hands it every capability inside,
the entry point of most recent local root exploits), io_uring, eBPF, perf events,
userfaultfd (a race amplifier), the keyring (not namespaced), and joining namespaces. Those
fail with EPERM. clone3 hides its flags in memory a filter cannot read, so it fails with
ENOSYS and glibc falls back to clone, whose flags the filter checks. Calls from any ABI but
x86_64 (i386 via int 0x80, x32) kill the process: their numbers differ and would bypass the list.
"""

from __future__ import annotations

import errno
import platform
import struct
from dataclasses import dataclass

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
CLONE_NEWUSER = 0x10000000

# x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
DENIED_SYSCALLS = {
    "acct": 163,
    "add_key": 248,
    "bpf": 321,
    "fsconfig": 431,
    "fsmount": 432,
    "fsopen": 430,
    "fspick": 433,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "io_uring_setup": 425,
    "kexec_file_load": 320,
    "kexec_load": 246,
    "keyctl": 250,
    "move_mount": 429,
    "mount_setattr": 442,
    "open_by_handle_at": 304,
    "open_tree": 428,
    "perf_event_open": 298,
    "request_key": 249,
    "setns": 308,
    "userfaultfd": 323,
}
# Return 0 without doing anything. The job's disk is thrown away, so durability means nothing to
# it, while a wait for writeback is uninterruptible: a build could sit out SIGKILL in sync(2)
# (which also stalls every other writer on the host) or fsync(2) after flooding the page cache.
NOOP_SYSCALLS = {
    "fdatasync": 75,
    "fsync": 74,
    "sync": 162,
    "sync_file_range": 277,
    "syncfs": 306,
}
# socket(2) and socketpair(2) families a build may use: local, IP (its own empty network
# namespace) and netlink (ip, ss). AF_VSOCK is not per network namespace and reaches the
# hypervisor; the other ~40 families are attack surface no build needs.
SOCKET = 41
SOCKETPAIR = 53
ALLOWED_SOCKET_FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16}
CLONE = 56
UNSHARE = 272
CLONE3 = 435

# Classic BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
_NR_OFFSET = 0
_ARCH_OFFSET = 4
_ARG0_LOW_OFFSET = 16  # args[0], low 32 bits on little-endian x86_64


@dataclass(frozen=True)
class _Insn:
    code: int
    k: int
    jt: str | int = 0  # a label name, or 0 for "next instruction"
    jf: str | int = 0


def is_supported() -> bool:
    """The filter encodes x86_64 numbers; elsewhere the build runs without it (and says so)."""
    return platform.machine() == "x86_64"


def build_filter() -> bytes:
    """The filter as struct sock_filter[] bytes, ready to hand to bwrap on a file descriptor."""
    eperm = RET_ERRNO | errno.EPERM
    program: list[_Insn | str] = [
        _Insn(_LD_W_ABS, _ARCH_OFFSET),
        _Insn(_JEQ_K, AUDIT_ARCH_X86_64, jt=0, jf="kill"),
        _Insn(_LD_W_ABS, _NR_OFFSET),
        _Insn(_JGE_K, X32_SYSCALL_BIT, jt="kill"),
        _Insn(_JEQ_K, CLONE, jt="check_flags"),
        _Insn(_JEQ_K, UNSHARE, jt="check_flags"),
        _Insn(_JEQ_K, CLONE3, jt="enosys"),
        _Insn(_JEQ_K, SOCKET, jt="check_family"),
        _Insn(_JEQ_K, SOCKETPAIR, jt="check_family"),
    ]
    program += [_Insn(_JEQ_K, number, jt="eperm") for number in sorted(DENIED_SYSCALLS.values())]
    program += [_Insn(_JEQ_K, number, jt="noop") for number in sorted(NOOP_SYSCALLS.values())]
    program += [
        _Insn(_RET_K, RET_ALLOW),
        "check_flags",
        _Insn(_LD_W_ABS, _ARG0_LOW_OFFSET),
        _Insn(_JSET_K, CLONE_NEWUSER, jt="eperm"),
        _Insn(_RET_K, RET_ALLOW),
        "check_family",
        _Insn(_LD_W_ABS, _ARG0_LOW_OFFSET),
    ]
    program += [_Insn(_JEQ_K, family, jt="allow") for family in sorted(ALLOWED_SOCKET_FAMILIES.values())]
    program += [
        _Insn(_RET_K, RET_ERRNO | errno.EAFNOSUPPORT),
        "allow",
        _Insn(_RET_K, RET_ALLOW),
        "noop",
        _Insn(_RET_K, RET_ERRNO | 0),
        "eperm",
        _Insn(_RET_K, eperm),
        "enosys",
        _Insn(_RET_K, RET_ERRNO | errno.ENOSYS),
        "kill",
        _Insn(_RET_K, RET_KILL_PROCESS),
    ]
    return _assemble(program)


def _assemble(program: list[_Insn | str]) -> bytes:
    labels: dict[str, int] = {}
    insns: list[_Insn] = []
    for item in program:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item)

    def offset(target: str | int, index: int) -> int:
        if isinstance(target, int):
            return target
        jump = labels[target] - index - 1
        if not 0 <= jump <= 255:
            raise ValueError(f"BPF jump to {target} out of range ({jump})")
        return jump

    return b"".join(
        struct.pack("<HBBI", insn.code, offset(insn.jt, i), offset(insn.jf, i), insn.k)
        for i, insn in enumerate(insns)
    )
