"""Kernel crash detection on a console: the first crash, its syzbot-style title and its report (pure, streaming).

A console arrives in chunks of any size; :class:`ConsoleWatcher` keeps only the line in
progress (at most ``MAX_LINE`` characters of it) and, once a crash report starts, that
report (at most ``MAX_REPORT_LINES`` lines). The first crash wins: after its report ends,
the rest of the console is not read.

Titles follow syzbot's rules (lab/crash_titles.py), so that a labgate crash title is the
dedup key syzbot would give: ``KASAN: slab-out-of-bounds Read in foo``, ``WARNING in bar``,
``kernel BUG in baz``, ``general protection fault in f``, ``BUG: unable to handle kernel
paging request in g``, ``INFO: task hung in h``, ``INFO: rcu detected stall in i``,
``BUG: soft lockup in j``, ``UBSAN: shift-out-of-bounds in k``, ``kernel panic: msg``.
Where we differ, on purpose: a report starts only where its header starts a kernel message
(after the timestamp, the caller field and at most one ``subsystem: `` prefix), never in
the middle of a line; and an ``INFO:`` or ``WARNING:`` line starts a report only when it
has the shape of a kernel report, not when a program printed "INFO: starting".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ahocorasick_rs import AhoCorasick, BytesAhoCorasick, MatchKind

from lab.crash_titles import FRAME, describe_report, is_stack_start, known_shape, syzbot_regex

__all__ = ["MAX_LINE", "MAX_REPORT_LINES", "NEEDLES", "ConsoleWatcher", "Crash", "first_crash"]

MAX_LINE = 1024  # characters kept of one line: headers are at a line's start, a 1 MB line is cut
MAX_REPORT_LINES = 500  # a report longer than this is cut (all CPUs' backtraces, a flood)
MAX_REPORT_CHARS = 128 * 1024

# Every report header contains one of these: the only text searched in a console with no
# crash yet, all at once in one pass (_Finder). bench/console_watch.py greps for the same strings.
NEEDLES = ("BUG", "WARNING:", "INFO:", "Kernel panic", "UBSAN:", " [#", "Unable to handle kernel",
           "PANIC: double fault")  # fmt: skip


class _Finder:
    """Where some strings occur in a text, all of them searched in one pass (Aho-Corasick, in C).

    One pass instead of one str.find per string. An ASCII text is searched as its bytes, where
    a byte offset is a character offset (the byte automaton runs at several GB/s; the str one
    converts offsets and is ~10x slower, so it serves only texts with other characters).
    """

    def __init__(self, words: tuple[str, ...]) -> None:
        self._text = AhoCorasick(words, matchkind=MatchKind.LeftmostFirst)
        self._bytes = BytesAhoCorasick([word.encode() for word in words], matchkind=MatchKind.LeftmostFirst)
        self.longest = max(map(len, words))

    def starts(self, text: str, encoded: bytes | None, start: int, end: int) -> list[int]:
        """Starts of the leftmost non-overlapping occurrences within text[start:end] (encoded: text's ASCII bytes).

        Every line of the range that holds one of the words has at least one start in the list:
        an occurrence hidden by an overlapping one is on the same line (no word has a newline).
        """
        if encoded is not None:
            # A slice of bytes costs less than a memoryview's buffer set-up, unless it is large.
            whole = start == 0 and end >= len(encoded)
            matches = self._bytes.find_matches_as_indexes(encoded if whole else encoded[start:end])
        else:
            matches = self._text.find_matches_as_indexes(text[start:end])
        return [start + match[1] for match in matches]


def _ascii_bytes(text: str) -> bytes | None:
    """The text's bytes when it is ASCII (str.isascii is a flag lookup), for _Finder's byte search."""
    return text.encode("ascii") if text.isascii() else None


_NEEDLE_FINDER = _Finder(NEEDLES)
_SCAN_WINDOW = 16384  # how much text one needle search covers: bounds the list of hits of a flood of needles


@dataclass(frozen=True)
class Crash:
    """The first crash on a console."""

    title: str  # syzbot-style: "WARNING in lkdtm_WARNING", "kernel panic: dumptest"
    kind: str  # panic, oops, bug, warning, kasan, ubsan, hung-task, rcu-stall, soft-lockup, lockdep
    excerpt: str  # the report's lines as printed (timestamps kept, "\r" dropped), first line to its end


def first_crash(text: str) -> Crash | None:
    """The first crash in a whole console, or None."""
    watcher = ConsoleWatcher()
    watcher.feed(text)
    return watcher.crash()


# --- reading one line ---------------------------------------------------------------------

# What precedes a kernel message: a dropped-messages note, a syslog level, the timestamp and
# the caller field of CONFIG_PRINTK_CALLER ("[    T1]" a task, "[    C0]" a CPU in interrupt).
_BEFORE_CALLER = r"(?:\*\* [0-9]+ printk messages dropped \*\* )?(?:<[0-9]+>)?(?:\[ *[0-9]+\.[0-9]+\])?"
_PREFIX = re.compile(_BEFORE_CALLER + r"(?:\[ *([CT][0-9]+)\])?[ \t]*")
# A report header at a message's start. The x86 and arm die() headers ("invalid opcode: 0000
# [#1]") are told from other text by their " [#N]" oops counter.
_START = re.compile(
    r"(?:[A-Za-z0-9_.-]{1,24}: )?"  # a subsystem's pr_fmt: "watchdog: BUG: soft lockup", "rcu: INFO: ..."
    r"(BUG:|kernel BUG|Kernel BUG|WARNING:|INFO:|Kernel panic|UBSAN:|Unable to handle kernel|PANIC: double fault"
    r"|(?:general protection fault|invalid opcode|divide error|stack segment|Oops|Internal error)(?=.* \[#))"
)


# A frame line with its prefix, matched on the raw line: most lines of a report are frames, and
# this takes them in one step (group 1 is the caller field).
_RAW_FRAME = syzbot_regex(_PREFIX.pattern + r"(?:{PC} ){0,2}{FUNC}")


def _message(line: str) -> tuple[str, str]:
    """(message without its prefix, caller field or "")."""
    if not line or line[0] not in "[<* \t":
        return line, ""  # no prefix to strip: most lines of a console without timestamps
    match = _PREFIX.match(line)
    assert match is not None  # every part of it is optional
    return line[match.end() :], match.group(1) or ""


# Lines that carry an INFO: or WARNING: header but are not kernel reports.
_SUPPRESSED = re.compile(
    r"WARNING: /etc/ssh/moduli does not exist|WARNING: workqueue cpumask: online intersect > possible intersect"
    r"|WARNING: [Tt]he mand mount option (?:is being|has been) deprecated|WARNING: Unsupported flag value"
    r"|WARNING: Unprivileged eBPF is enabled with eIBRS|WARNING: fbcon: Driver '|WARNING: See https.* for mitigation"
    r"|WARNING: kernel not compiled with CPU_SRSO"
)
# Headers that belong inside the report before them: they never start a second one.
_INSIDE = re.compile(r"invalid opcode: 0000|Kernel panic - not syncing|PANIC: double fault|Internal error:|Oops: ")


def _header(message: str) -> str | None:
    """The group key when this message starts a crash report, else None."""
    match = _START.match(message)
    if match is None:
        return None
    key = match.group(1)
    if key in ("WARNING:", "INFO:"):
        if _SUPPRESSED.search(message):
            return None
        if not known_shape(key, message[match.start(1) :]):
            return None
    return key


# --- where a report ends ----------------------------------------------------------------

_END_MARKER = re.compile(r"---\[ end (?:trace|Kernel panic)")  # matched at a message's start
_RULE = re.compile(r"={20,}$")  # KASAN's and UBSAN's reports end with a line of "="
# A line of a call trace: a frame (reliable, "? " unreliable, or an inlined one with its file),
# a context tag, a register dump line. Never a header, an end marker or a stack's first line.
_TRACE_BODY = (
    r"(?:\? )?(?:\[<?(?:0x)?[0-9a-f]+>?\] ?){0,2}[ \t]*(?:\? )?[A-Za-z0-9_.]+"
    r"(?:\+0x[0-9a-f]+/0x[0-9a-f]+| \S+\.[ch]:[0-9]+)"
    r"|</?(?:TASK|IRQ|NMI|SOFTIRQ|EOI)>"
    r"|(?:RIP|RSP|RAX|RBX|RCX|RDX|RSI|RDI|RBP|R[0-9]{1,2}|FS|GS|CS|DS|ES|CR[0-9]|DR[0-9]|EFLAGS|ORIG_RAX|Code|PKRU"
    r"|pc|lr|sp|x[0-9]{1,2}|pstate):"
    r"|Exception stack|\.\.\."
)
_TRACE_LINE = re.compile(_TRACE_BODY + r"|---\[ ")
# Runs of whole lines read at regex speed (prefix included); see ConsoleWatcher._lines.
_ANY_PREFIX = _BEFORE_CALLER + r"(?:\[ *[CT][0-9]+\])?[ \t]*"
_LINE_PREFIXES = re.compile(f"\n{_ANY_PREFIX}")  # after a newline: "(?m)^" would be tried at every position
_TRACE_RUN = re.compile(rf"(?:{_ANY_PREFIX}(?:{_TRACE_BODY})[^\n]*\n)*")
_RUN_FRAME = syzbot_regex(rf"(?m)^{_ANY_PREFIX}(?:\?|(?:{{PC}} ){{0,2}}{{FUNC}})")
# Lines in a row that carry one caller field, the first line's (group "c"), read as _PREFIX reads it.
_SAME_CALLER_RUN = re.compile(
    rf"{_BEFORE_CALLER}\[ *(?P<c>[CT][0-9]+)\][^\n]*\n(?:{_BEFORE_CALLER}\[ *(?P=c)\][^\n]*\n)*"
)
# What can change a report's course on a line outside a trace: a header, an end marker, a
# stack's first line, a sanitizer's closing rule. A line with none of these is simply added.
_EVENTS = (*NEEDLES, "---[ end ", "race", "Allocated", "Freed", "acktrace", "Uninit", "=====",
           "Sending NMI from CPU")  # fmt: skip
_EVENT_FINDER = _Finder(_EVENTS)
_WINDOW = 2048  # how far one bulk step looks ahead: a report is a few KiB, a chunk may be 1 MiB
_TAIL = re.compile(r"Modules linked in:|CR2: |Kernel Offset:|Rebooting in|Dumping ftrace buffer"
                   r"|\(ftrace buffer empty\)|irq event stamp|hardirqs last|softirqs last")  # fmt: skip


@dataclass
class _Report:
    key: str
    context: str
    raw: list[str] = field(default_factory=list)
    messages: list[str | None] = field(default_factory=list)  # None: a frame, stripped when described
    chars: int = 0
    sanitizer: bool = False  # KASAN, UBSAN, KMSAN: several stacks and prose, ended only by their rule
    in_trace: bool = False
    saw_frame: bool = False
    any_cpu: bool = False  # after "Sending NMI from CPU": every CPU's backtrace belongs to it

    def add(self, raw: str, message: str) -> None:
        if not self.raw:
            self.sanitizer = "KASAN:" in message or "UBSAN:" in message or "KMSAN:" in message
        self.raw.append(raw)
        self.messages.append(message)
        self.chars += len(raw) + 1

    def take_frame(self, raw: str) -> bool:
        """Add a frame line (never a header or an end); False when the report reached its cap."""
        self.raw.append(raw)
        self.messages.append(None)
        self.chars += len(raw) + 1
        self.saw_frame = self.saw_frame or self.in_trace
        return len(self.raw) < MAX_REPORT_LINES and self.chars < MAX_REPORT_CHARS

    def take(self, raw: str, message: str, context: str) -> bool:
        """Add the line if it belongs; False when the report ended (with this line, or before it)."""
        if self.context and context and context != self.context and not (self.any_cpu and context[0] == "C"):
            return True  # another task's or CPU's interleaved output
        if FRAME.match(message):  # the commonest line of a report, and never a header or an end
            self.add(raw, message)
            self.saw_frame = self.saw_frame or self.in_trace
            return len(self.raw) < MAX_REPORT_LINES and self.chars < MAX_REPORT_CHARS
        if _header(message) is not None and not _INSIDE.search(message):
            return False  # the next report
        self.add(raw, message)
        if "Sending NMI from CPU" in message:
            self.any_cpu = True
        if self.sanitizer:
            if message.startswith("=") and _RULE.match(message):
                return False
        elif message.startswith("---[ end ") and _END_MARKER.match(message):
            return False
        elif is_stack_start(message):
            self.in_trace = True
        elif self.in_trace:
            if _TRACE_LINE.match(message):
                # "? frame": unreliable (the "guess" unwinder prints nothing else), but a frame of the trace.
                self.saw_frame = self.saw_frame or message.startswith("?")
            elif self.saw_frame and not _TAIL.match(message):
                self.chars -= len(self.raw.pop()) + 1  # the trace is over: this line is not the report's
                self.messages.pop()
                return False
        return len(self.raw) < MAX_REPORT_LINES and self.chars < MAX_REPORT_CHARS

    def describe(self, extra: tuple[str, str] | None = None) -> Crash:
        excerpt = "\n".join(self.raw if extra is None else [*self.raw, extra[0]])
        # Every line's prefix stripped in one pass: the same messages _message gives, line by line.
        title, kind = describe_report(self.key, _LINE_PREFIXES.sub("\n", "\n" + excerpt)[1:])
        return Crash(title=title, kind=kind, excerpt=excerpt)


class ConsoleWatcher:
    """Feed a console in chunks of any size; :meth:`crash` says the first crash so far.

    Memory stays bounded whatever arrives: the unfinished line is cut at MAX_LINE
    characters, a report at MAX_REPORT_LINES lines, and nothing else is kept.
    """

    def __init__(self) -> None:
        self._held: list[str] = []  # pieces of the unfinished line, MAX_LINE characters at most
        self._held_len = 0
        self._report: _Report | None = None
        self._ended: Crash | None = None

    def feed(self, chunk: str) -> None:
        """Read the next piece of console text; it may end, or start, in the middle of a line."""
        if self._ended is not None or not chunk:
            return
        last = chunk.rfind("\n")
        if last < 0:
            self._hold(chunk[:MAX_LINE])
            return
        start = 0
        if self._held:
            first = chunk.find("\n")
            self._hold(chunk[: min(first, MAX_LINE)])
            line = "".join(self._held)
            self._held, self._held_len = [], 0
            self._line(line)
            start = first + 1
        if self._ended is None and start <= last:
            encoded = _ascii_bytes(chunk)
            if self._report is None:
                self._scan(chunk, encoded, start, last)
            else:
                self._lines(chunk, encoded, start, last)
        if self._ended is None and last + 1 < len(chunk):
            self._hold(chunk[last + 1 : last + 1 + MAX_LINE])

    def crash(self) -> Crash | None:
        """The first crash: settled once its report ended; until then, its report as far as it arrived."""
        if self._ended is not None:
            return self._ended
        held = "".join(self._held).replace("\r", "")
        if self._report is None:
            if held:  # a console may end without a newline, right after a one-line report
                message, context = _message(held)
                key = _header(message)
                if key is not None:
                    return _Report(key, context, [held], [message]).describe()
            return None
        if held:
            message, context = _message(held)
            other = self._report.context and context and context != self._report.context
            if not other and (_header(message) is None or _INSIDE.search(message)):
                return self._report.describe((held, message))
        return self._report.describe()

    def _hold(self, piece: str) -> None:
        room = MAX_LINE - self._held_len
        if room > 0 and piece:
            piece = piece[:room]
            self._held.append(piece)
            self._held_len += len(piece)

    def _scan(self, chunk: str, encoded: bytes | None, start: int, end: int) -> None:
        """Find the first report header among the whole lines chunk[start:end+1]; read on from there."""
        window = start
        while window < end:
            # A needle starting in [window, stop) lies whole in [window, stop + longest - 1).
            stop = min(window + _SCAN_WINDOW, end)
            for position in _NEEDLE_FINDER.starts(chunk, encoded, window, min(stop + _NEEDLE_FINDER.longest - 1, end)):
                if position >= stop:
                    break
                if position < start:  # on a line already read
                    continue
                before = chunk.rfind("\n", start, position)
                line_start = start if before < 0 else before + 1
                line_end = chunk.find("\n", position, end + 1)
                self._line(chunk[line_start : min(line_end, line_start + MAX_LINE)])
                if self._report is not None:
                    if self._ended is None:
                        self._lines(chunk, encoded, line_end + 1, end)
                    return
                start = line_end + 1
            window = max(stop, start)

    def _lines(self, chunk: str, encoded: bytes | None, start: int, end: int) -> None:
        """Feed the whole lines chunk[start:end+1] to the open report until it ends.

        Lines that cannot change the report's course are added in runs found at regex and
        C search speed (a report is mostly frames and registers); the others go one by one
        through _line. Both ways give the same report, line for line.
        """
        report = self._report
        assert report is not None
        while start <= end and self._ended is None:
            stop = self._run_end(report, chunk, encoded, start, end)
            if report.context and stop > start:  # only the report's own task's or CPU's lines, in a row
                match = _SAME_CALLER_RUN.match(chunk, start, stop)
                stop = match.end() if match is not None and match.group("c") == report.context else start
            if stop > start and self._add_run(report, chunk[start:stop]):
                start = stop
                continue
            line_end = chunk.find("\n", start, end + 1)
            self._line(chunk[start : min(line_end, start + MAX_LINE)])
            start = line_end + 1

    @staticmethod
    def _run_end(report: _Report, chunk: str, encoded: bytes | None, start: int, end: int) -> int:
        """Where the lines from ``start`` that need no look of their own end (a line start)."""
        if report.in_trace and not report.sanitizer:
            match = _TRACE_RUN.match(chunk, start, end + 1)
            return match.end() if match else start
        limit = min(end + 1, start + _WINDOW)
        events = _EVENT_FINDER.starts(chunk, encoded, start, limit)
        first = events[0] if events else limit
        if first == limit:
            return chunk.rfind("\n", start, limit) + 1 or start
        return chunk.rfind("\n", start, first) + 1 or start

    @staticmethod
    def _add_run(report: _Report, run: str) -> bool:
        """Add whole lines as _line would; False (nothing added) when a cap or a long line needs it to look."""
        lines = run.split("\n")
        lines.pop()  # the run ends with a newline
        if max(map(len, lines)) > MAX_LINE:  # _line cuts such a line (before dropping "\r")
            return False
        if "\r" in run:
            run = run.replace("\r", "")
            lines = [line.replace("\r", "") for line in lines]
        if len(report.raw) + len(lines) >= MAX_REPORT_LINES or report.chars + len(run) >= MAX_REPORT_CHARS:
            return False
        report.raw += lines
        report.messages += [None] * len(lines)
        report.chars += len(run)
        if report.in_trace and not report.saw_frame and _RUN_FRAME.search(run):
            report.saw_frame = True
        return True

    def _line(self, line: str) -> None:
        if "\r" in line:
            line = line.replace("\r", "")
        report = self._report
        if report is not None:
            frame = _RAW_FRAME.match(line)
            if frame is not None and (not report.context or frame.group(1) in (None, report.context)):
                if not report.take_frame(line):
                    self._ended = report.describe()
                return
        message, context = _message(line)
        if report is None:
            key = _header(message)
            if key is not None:
                self._report = _Report(key, context)
                self._report.add(line, message)
            return
        if not report.take(line, message, context):
            self._ended = report.describe()
