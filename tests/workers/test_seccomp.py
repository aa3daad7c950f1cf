"""The seccomp filter's program: well-formed classic BPF that ends every path in a return."""

from __future__ import annotations

import struct

from workers import seccomp


def _program() -> list[tuple[int, int, int, int]]:
    data = seccomp.build_filter()
    assert len(data) % 8 == 0
    return [struct.unpack("<HBBI", data[i : i + 8]) for i in range(0, len(data), 8)]


def test_every_jump_lands_inside_the_program_and_it_ends_in_returns() -> None:
    program = _program()
    for index, (code, jt, jf, _k) in enumerate(program):
        if code & 0x07 == 0x05:  # BPF_JMP
            assert index + 1 + jt < len(program) and index + 1 + jf < len(program)
    assert program[-1][0] == 0x06 and program[-1][3] == seccomp.RET_KILL_PROCESS


def test_the_filter_checks_the_architecture_first_and_denies_the_listed_calls() -> None:
    program = _program()
    assert program[0] == (0x20, 0, 0, 4)  # load seccomp_data.arch
    assert program[1][3] == seccomp.AUDIT_ARCH_X86_64
    compared = {k for code, _jt, _jf, k in program if code == 0x15}
    assert set(seccomp.DENIED_SYSCALLS.values()) <= compared
    assert {seccomp.CLONE, seccomp.UNSHARE, seccomp.CLONE3} <= compared
    assert (0x45, 0, 0, seccomp.CLONE_NEWUSER) in [(c, 0, 0, k) for c, _jt, _jf, k in program if c == 0x45]
