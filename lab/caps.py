"""The caps on one boot and the bookkeeping of both read loops (QEMU's and a board's): which cap fired (pure).

A boot is read from two ports, the kernel console and the DUT runner's own port, until the
runner's end marker or a cap: the whole job's wall time, the boot cap (power-on to the
runner's first byte), the silence cap (no byte on either port), and the bytes kept of each
port. The read loops do the I/O; :class:`PortsReading` decides, so QEMU and boards stop for
the same reasons and say so in the same words.

A kernel panic also ends the boot, a moment after its header so that its report is kept: a
panicked kernel runs nothing more, and a board that reboots on panic would otherwise boot
again and again until the job's cap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["CAP_ENDINGS", "END_MARKER", "BootCaps", "Ended", "Port", "PortsReading", "cap_message"]

END_MARKER = "# labgate: end"
Ended = Literal["end-marker", "timeout", "boot-timeout", "silence", "qemu-exit", "console-limit", "runner-limit",
                "kernel-panic"]
Port = Literal["console", "runner"]
# Endings where labgate stopped the target (QEMU killed, the board powered off): a cap fired, or a panic.
CAP_ENDINGS: tuple[Ended, ...] = ("timeout", "boot-timeout", "silence", "console-limit", "runner-limit",
                                  "kernel-panic")  # fmt: skip
DEFAULT_PORT_BYTES = 16 * 1024 * 1024
PANIC_HEADER = b"Kernel panic - not syncing"  # panic()'s first line, since Linux 2.6

_END_LINE = re.compile(rb"\n" + re.escape(END_MARKER.encode()) + rb"\r?\n")


@dataclass(frozen=True)
class BootCaps:
    """The lab's caps on one boot; None: no cap of that kind beyond the job's."""

    job_s: float  # power-on to the runner's end marker
    boot_s: float | None = None  # power-on to the runner's first byte
    silence_s: float | None = None  # no byte on the console nor the runner's port
    console_bytes: int = DEFAULT_PORT_BYTES
    runner_bytes: int = DEFAULT_PORT_BYTES
    panic_grace_s: float = 3.0  # after a panic's header, for its report (a few KB) to arrive


def cap_message(ended: Ended, caps: BootCaps, stopped_s: float | None = None) -> str:
    """Which cap fired and its value, in the words of the console's note and of the result's message.

    `stopped_s`: when, after power-on, the target was stopped (said when given).
    """
    at = f" (stopped {stopped_s:.1f} s after power-on)" if stopped_s is not None else ""
    if ended == "timeout":
        return f"the job cap fired: the runner's end marker did not come within {caps.job_s:g} s of power-on{at}"
    if ended == "boot-timeout":
        return f"the boot cap fired: the runner did not start within {caps.boot_s:g} s of power-on{at}"
    if ended == "silence":
        return f"the silence cap fired: no byte on the console nor the runner's port for {caps.silence_s:g} s{at}"
    if ended == "console-limit":
        return f"the console cap fired: the kernel console passed {caps.console_bytes} bytes (truncated there){at}"
    if ended == "runner-limit":
        return f"the runner's output cap fired: the commands' output passed {caps.runner_bytes} bytes{at}"
    if ended == "kernel-panic":
        return f"the kernel panicked: the target was stopped {caps.panic_grace_s:g} s after the panic{at}"
    return f"the boot ended: {ended}{at}"


class PortsReading:
    """What both ports said so far, and whether a cap or the end marker ends the boot.

    Feed every chunk with :meth:`take` and ask :meth:`due` when no byte came; either returns
    the ending once the boot must stop. `now` is a monotonic clock reading, `on_at` the
    power-on's.
    """

    def __init__(self, caps: BootCaps, on_at: float) -> None:
        self.caps = caps
        self.console = bytearray()
        self.runner = bytearray()
        self._on_at = on_at
        self._last_byte_at = on_at
        self._ended: Ended | None = None
        self._panic_at: float | None = None

    @property
    def reached_runner(self) -> bool:
        return bool(self.runner)

    def take(self, port: Port, chunk: bytes, now: float) -> Ended | None:
        """Add a chunk from a port; the ending if it ends the boot (the end marker or a byte cap)."""
        if self._ended is not None or not chunk:
            return self._ended
        self._last_byte_at = now
        if port == "console":
            searched_to = max(0, len(self.console) - len(PANIC_HEADER))
            self.console += chunk
            if self._panic_at is None and self.console.find(PANIC_HEADER, searched_to) >= 0:
                self._panic_at = now
            if len(self.console) > self.caps.console_bytes:
                del self.console[self.caps.console_bytes :]
                return self._end("console-limit")
            return None
        searched_to = max(0, len(self.runner) - len(END_MARKER) - 2)
        self.runner += chunk
        found = _END_LINE.search(self.runner, searched_to)
        if found and found.end() <= self.caps.runner_bytes:
            del self.runner[found.end() :]
            return self._end("end-marker")
        if len(self.runner) > self.caps.runner_bytes:
            del self.runner[self.caps.runner_bytes :]
            return self._end("runner-limit")
        return None

    def due(self, now: float) -> Ended | None:
        """The time cap that has fired by `now`, if any (the job's first: it is the one a plan cannot outlast)."""
        if self._ended is not None:
            return self._ended
        if now >= self._on_at + self.caps.job_s:
            return self._end("timeout")
        if not self.reached_runner and self.caps.boot_s is not None and now >= self._on_at + self.caps.boot_s:
            return self._end("boot-timeout")
        if self.caps.silence_s is not None and now >= self._last_byte_at + self.caps.silence_s:
            return self._end("silence")
        if self._panic_at is not None and now >= self._panic_at + self.caps.panic_grace_s:
            return self._end("kernel-panic")
        return None

    def wait_s(self, now: float) -> float:
        """How long a read may block before the next time cap is due (never negative)."""
        deadlines = [self._on_at + self.caps.job_s]
        if not self.reached_runner and self.caps.boot_s is not None:
            deadlines.append(self._on_at + self.caps.boot_s)
        if self.caps.silence_s is not None:
            deadlines.append(self._last_byte_at + self.caps.silence_s)
        if self._panic_at is not None:
            deadlines.append(self._panic_at + self.caps.panic_grace_s)
        return max(0.0, min(deadlines) - now)

    def result(self, ended: Ended) -> tuple[bytes, bytes, Ended]:
        """(console, runner, ended): what the read loops return."""
        return bytes(self.console), bytes(self.runner), self._ended or ended

    def _end(self, ended: Ended) -> Ended:
        self._ended = ended
        return ended
