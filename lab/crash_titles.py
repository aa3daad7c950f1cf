"""syzbot's crash title rules (google/syzkaller pkg/report): header formats, the culprit frame, the clean-up.

A report's title is what syzbot would give it, so that it is the dedup key across labgate
and syzbot: the format whose title pattern starts earliest in the report wins; its groups
and the culprit frame (found by walking the stack past generic frames, or picked by the
stall and hang rules) fill its template; then addresses, numbers and line numbers are
replaced so that the same bug keeps the same title. lab/console.py finds the reports.

Read from syzkaller's pkg/report/linux.go and report.go (its oops table, frame skip list,
stall and hang pickers, title replacements) and written anew for the cases labgate meets;
the tests check the titles against syzbot's own on its public reports and test files.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

from ahocorasick_rs import AhoCorasick

__all__ = ["FRAME", "GROUPS", "describe_report", "is_stack_start", "known_shape", "syzbot_regex"]

MAX_TITLE = 120  # syzbot's cap: intermixed lines can make very long titles


def syzbot_regex(pattern: str) -> re.Pattern[str]:
    """A regex with syzbot's shorthands: {FUNC} a function name in a frame, {PC} an address, {SRC} file:line."""
    pattern = pattern.replace("{FUNC}", r"([a-zA-Z0-9_]+)(?:\.|\+)")
    pattern = pattern.replace("{PC}", r"\[<?(?:0x)?[0-9a-f]+>?\]")
    pattern = pattern.replace("{SRC}", r"([a-zA-Z0-9_/.-]+\.[a-z]+:[0-9]+)")
    return re.compile(pattern)


_re = syzbot_regex  # short, for the tables below


_STACK_START = re.compile(r"Call (?:T|t)race|Allocated:|Allocated by task [0-9]+:|Freed:|Freed by task [0-9]+:"
                          r"|[^k] backtrace:|Backtrace:|Uninit was stored to memory at")  # fmt: skip


def is_stack_start(line: str) -> bool:
    """Whether a line starts a stack (a call trace, KASAN's allocation or free stack...)."""
    # Plain substring tests first: the regex is a long alternation, and most lines are frames.
    if "race" in line or "Allocated" in line or "Freed" in line or "acktrace" in line or "Uninit" in line:
        return _STACK_START.search(line) is not None
    return False


FRAME = _re(r"^ *(?:{PC} ){0,2}{FUNC}")
# The same at every line start of a text, anchored on the newline before the line: a literal
# first character lets the regex engine skip to it, where "(?m)^" tries every position.
_FRAMES = _re(r"\n *(?:{PC} ){0,2}{FUNC}")
# The same, searched in a whole report, one way at a time: each of these starts with a literal
# the regex engine skips to, where _STACK_START's alternation is tried at every position.
_STACK_START_WAYS = (re.compile(r"Call (?:T|t)race"), re.compile(r"Allocated(?::| by task [0-9]+:)"),
                     re.compile(r"Freed(?::| by task [0-9]+:)"), re.compile("Backtrace:"),
                     re.compile("Uninit was stored to memory at"))  # fmt: skip


def _stack_start_in(text: str, position: int) -> tuple[int, int] | None:
    """(start, end) of _STACK_START's leftmost match in text from position, none across a newline."""
    found = [(match.start(), match.end()) for way in _STACK_START_WAYS if (match := way.search(text, position))]
    # "[^k] backtrace:": a character other than "k" (or a newline) before " backtrace:".
    at = text.find(" backtrace:", position + 1)
    while at > 0 and text[at - 1] in "k\n":
        at = text.find(" backtrace:", at + 1)
    if at > 0:
        found.append((at - 1, at + 11))
    return min(found) if found else None


_RIP = _re(r"(?:IP|NIP|pc |PC is at):? (?:(?:[0-9]+:)?(?:{PC} +){0,2}{FUNC}|(?:[0-9]+:)?0x[0-9a-f]+"
           r"|(?:[0-9]+:)?{PC} +\[< *\(null\)>\] +\(null\)|[0-9]+: +\(null\))")  # fmt: skip
_CALL_TRACE = re.compile(r"Call (?:T|t)race:|Backtrace:")
PARSE = None  # a stack part that reads the stack trace from here on

# Frames that are never the culprit: sanitizers and report printing, allocators, locks,
# atomics, string and copy helpers, generic waiting and device-core plumbing.
_GENERIC_FRAMES = (
    "__sanitizer", "__asan", "kasan", "__msan", "kmsan", "kcsan_setup_watchpoint", "check_memory_region",
    "check_heap_object", "check_object", "read_word_at_a_time", "(read|write)_once_.*nocheck",
    "print_address_description", "panic", "invalid_op", "report_bug", "fixup_bug", "print_report",
    "print_usage_bug", "do_error", "_trap$|do_trap", "show_stack", "dump_stack", "walk_stack", "dump_backtrace",
    "warn_slowpath", "warn_alloc", "warn_bogus", "__warn", "print_tainted", "stack_trace_consume_entry",
    "arch_stack_walk", "stack_trace_save",
    "alloc_page", "k?v?(?:m|z|c)alloc", "krealloc", "kmem_cache", "allocate_slab", "slab_", "^kv?free$",
    "kfree_skb", "folio_alloc", "debug_object", "timer_is_static_object", "work_is_static_object",
    "lockdep", "lock_acquire", "lock_release", "lock_class", "mark_lock", "(reacquire|mark)_held_locks",
    "raw_spin_rq", "spin_lock", "spin_trylock", "spin_unlock", "read_lock", "read_trylock", "write_lock",
    "write_trylock", "read_unlock", "write_unlock", "^down$", "down_read", "down_write", "down_trylock",
    "up_read", "up_write", "^mutex_", "^__mutex_", "^rt_mutex_", "owner_on_cpu", "osq_lock", "osq_unlock",
    "bh_enable", "bh_disable", "(trace|lockdep)_(hard|soft)irq", "print_unlock", "imbalance_bug",
    "atomic(64)?_(dec|inc|read|set|or|xor|and|add|sub|fetch|xchg|cmpxchg|try)", "(set|clear|change|test)_bit",
    "__wake_up", "^refcount_", "^kref_", "ref_tracker", "list_add", "list_del", "list_replace", "list_move",
    "list_splice", "^rb_", "^__rb_",
    "memcpy", "memcmp", "memset", "memchr", "memmove", "memdup", "strcmp", "strncmp", "strcpy", "strlcpy",
    "strncpy", "strscpy", "strlen", "strstr", "strnstr", "strnlen", "strchr", "strdup", "strndup",
    "copy_to_user", "copy_from_user", "copy_to_iter", "copy_from_iter", "put_user", "get_user", "might_fault",
    "might_sleep", "__might_resched", "_indirect_thunk_", "string", "pointer", "snprintf", "scnprintf",
    "kasprintf", "kvasprintf", "printk", "va_format", "dev_info", "dev_notice", "dev_warn", "dev_err",
    "dev_alert", "dev_crit", "dev_emerg",
    "del_timer", "flush_work", "__cancel_work_timer", "cancel_work_sync", "try_to_grab_pending",
    "flush_workqueue", "drain_workqueue", "destroy_workqueue", "queue_work", "insert_work", "finish_wait",
    "kthread_stop", "^complete$", "wait_for_completion", "kobject_", "add_uevent_var", "get_device_parent",
    "device_add", "device_del", "device_unregister", "device_destroy", "device_release", "devres_release_all",
    "device_for_each_child", "sysfs_remove", "device_remove_file",
)  # fmt: skip
# Syscall wrappers differ by arch and version: "__x64_sys_write" and "ksys_write" are "write".
_SYSCALL_PREFIXES = ("SYSC_", "SyS_", "sys_", "__x64_", "__ia32_", "__arm64_", "____sys_", "___sys_", "__sys_",
                     "__se_", "__do_sys_", "compat_SYSC_", "compat_SyS_", "ksys_")  # fmt: skip

Pick = Callable[[list[str]], str]


@dataclass(frozen=True)
class _Stack:
    """How to find the culprit frame: parts matched in turn (PARSE reads a trace), frames to skip, a picker."""

    parts: tuple[re.Pattern[str] | None, ...]
    parts2: tuple[re.Pattern[str] | None, ...] = ()  # tried when parts find no frame
    skip: tuple[str, ...] = ()
    pick: Pick | None = None  # default: the first frame


@dataclass(frozen=True)
class _Format:
    kind: str
    title: re.Pattern[str]  # where this report's title starts (searched in the report)
    fmt: str  # str.format with the title's (or report's) groups, then the culprit frame
    report: re.Pattern[str] | None = None  # when given, must match too; its groups are used
    stack: _Stack | None = None


# In a soft lockup or an RCU stall the trace points anywhere in a loop; the frame just above
# the entry point (a syscall, a work item, a timer) names the loop better.
_STALL_ANCHORS = re.compile(
    r"process_one_work|do_syscall_|do_fast_syscall_|sysenter_dispatch|tracesys_phase2|el0_svc_handler"
    r"|invoke_syscall|ret_fast_syscall|netif_receive_skb|do_softirq|call_timer_fn|_run_timers|run_timer_softirq"
    r"|hrtimer_run|run_ksoftirqd|smpboot_thread_fn|^kthread$|start_secondary|cpu_startup_entry|ret_from_fork"
    r"|vfs_write|vfs_read|vfs_iter_read|vfs_iter_write|do_iter_read|do_iter_write|call_read_iter|call_write_iter"
    r"|new_sync_read|new_sync_write|vfs_ioctl|ksys_ioctl|compat_ioctl|compat_sys_ioctl|blkdev_driver_ioctl"
    r"|blkdev_ioctl|do_iter_readv_writev|^call_mmap|mmap_region|do_mmap|do_dentry_open|vfs_open|^sock_sendmsg"
    r"|^sock_recvmsg|^sock_release|^__sock_release|^setsockopt$|kernel_setsockopt|sock_common_setsockopt"
    r"|^listen$|kernel_listen|sk_common_release|^sock_mmap|^accept$|kernel_accept|^sock_do_ioctl|^sock_ioctl"
    r"|^compat_sock_ioctl|^nfnetlink_rcv_msg|^rtnetlink_rcv_msg|^netlink_dump|^(sys_)?(socketpair|connect|ioctl)"
    r"|__do_fault|do_page_fault|^page_fault$|__fput|task_work_run|exit_to_usermode|smp_call_function"
    r"|tasklet_action|tasklet_hi_action"
)


def _pick_stall(frames: list[str]) -> str:
    previous = frames[0]
    for frame in frames:
        if _STALL_ANCHORS.search(frame):
            return "smp_call_function" if "smp_call_function" in frame else previous
        previous = frame
    return ""


_HANG_ANCHORS = {"rtnl_lock": "rtnl_lock", "synchronize_rcu": "synchronize_rcu", "synchronize_srcu": "synchronize_rcu",
                 "synchronize_net": "synchronize_rcu", "synchronize_sched": "synchronize_rcu"}  # fmt: skip
_HANG_SKIP = ("sched", "_lock", "_slowlock", "down", "rwsem", "completion", "kthread", "wait", "synchronize",
              "context_switch", "__switch_to", "cancel_delayed_work", "rcu_barrier")  # fmt: skip


def _pick_hang(frames: list[str]) -> str:
    # A hung task is a victim: hangs in synchronize_rcu() or on rtnl_lock are one bug each,
    # whoever waited; otherwise the first frame that is not waiting machinery.
    for frame in frames:
        for anchor, name in _HANG_ANCHORS.items():
            if anchor in frame:
                return name if name == "synchronize_rcu" else frame
    return next((f for f in frames if not any(word in f for word in _HANG_SKIP)), "")


def _warning(skip: tuple[str, ...] = ()) -> _Stack:
    # x86 WARN()s trap: the culprit is on the RIP line before the trace.
    return _Stack((_re(rf"(?:{_RIP.pattern}|--- interrupt: [0-9]+ at {{FUNC}})"), PARSE),
                  (_CALL_TRACE, PARSE), skip)  # fmt: skip


_AT_RIP = _Stack((_RIP, _CALL_TRACE, PARSE))
_AT_TRACE = _Stack((_CALL_TRACE, PARSE))
_KASAN_SKIP = ("kernel_fault", "tag_check", "mem_abort", "^el1_", "^el1h_")
_UBSAN_SKIP = ("ubsan", "overflow")

# One entry per header: its kind when no format matches, and its formats, most specific first.
GROUPS: dict[str, tuple[str, tuple[_Format, ...]]] = {
    "BUG:": ("bug", (
        _Format("kasan", _re(r"BUG: KASAN:"), "KASAN: {0} {2} in {3}",
                _re(r"BUG: KASAN: ([a-z\-]+) in {FUNC}(?:.*\n)+?.*(Read|Write) (?:of size|at addr) (?:[0-9a-f]+)"),
                _Stack((_re(r"BUG: KASAN: (?:[a-z\-]+) in {FUNC}"), _CALL_TRACE, PARSE), skip=_KASAN_SKIP)),
        _Format("kasan", _re(r"BUG: KASAN:"), "KASAN: invalid-free in {1}",
                _re(r"BUG: KASAN: (?:double-free or invalid-free|double-free|invalid-free) in {FUNC}"),
                _Stack((_re(r"BUG: KASAN: (?:double-free or invalid-free|double-free|invalid-free) in {FUNC}"),
                        _CALL_TRACE, PARSE), skip=("slab_", "kfree", "vunmap", "vfree"))),
        _Format("kasan", _re(r"BUG: KASAN: ([a-z\-]+) on address(?:.*\n)+?.*(Read|Write) of size ([0-9]+)"),
                "KASAN: {0} {1}"),
        _Format("kasan", _re(r"BUG: KASAN: (.*)"), "KASAN: {0}"),
        _Format("oops", _re(r"BUG: (?:unable to handle kernel paging request|unable to handle page fault for address"
                            r"|Unable to handle kernel data access)"),
                "BUG: unable to handle kernel paging request in {0}", stack=_AT_RIP),
        _Format("oops", _re(r"BUG: (?:unable to handle kernel NULL pointer dereference|kernel NULL pointer dereference"
                            r"|Kernel NULL pointer dereference)"),
                "BUG: unable to handle kernel NULL pointer dereference in {0}", stack=_AT_RIP),
        _Format("oops", _re(r"BUG: (?:unable to handle kernel|Unable to handle kernel)"),
                "BUG: unable to handle kernel"),
        _Format("bug", _re(r"BUG: (spinlock|rwlock) (lockup suspected|already unlocked|recursion|cpu recursion"
                           r"|bad magic|wrong owner|wrong CPU|trylock failure on UP)"),
                "BUG: {0} {1} in {2}", stack=_Stack((_CALL_TRACE, PARSE), skip=("spin_", "_lock", "_unlock"))),
        _Format("soft-lockup", _re(r"BUG: soft lockup"), "BUG: soft lockup in {0}",
                stack=_Stack((_RIP, _CALL_TRACE, PARSE), pick=_pick_stall)),
        _Format("bug", _re(r"BUG: scheduling while atomic"), "BUG: scheduling while atomic in {0}",
                stack=_Stack((_CALL_TRACE, PARSE), skip=("schedule",))),
        _Format("bug", _re(r"BUG: sleeping function called from invalid context at (.*)"),
                "BUG: sleeping function called from invalid context in {1}", stack=_AT_TRACE),
        _Format("bug", _re(r"BUG: Bad page state"), "BUG: Bad page state"),
        _Format("bug", _re(r"BUG: Bad page map"), "BUG: Bad page map"),
        _Format("bug", _re(r"BUG: workqueue lockup"), "BUG: workqueue lockup"),
        _Format("bug", _re(r"BUG: .*stack guard page was hit at"), "BUG: stack guard page was hit in {0}",
                stack=_Stack((_RIP, _CALL_TRACE, PARSE), pick=_pick_stall)),
        _Format("bug", _re(r"BUG:[ \t]*(?:\n|$)"), "BUG: corrupted"),
    )),
    "WARNING:": ("warning", (
        _Format("warning", _re(r"WARNING: .*lib/refcount\.c.* refcount_"), "WARNING: refcount bug in {0}",
                stack=_warning(("refcount", "kobject_"))),
        _Format("lockdep", _re(r"WARNING: .*kernel/locking/lockdep\.c.*lock_"), "WARNING: locking bug in {0}",
                stack=_warning(("lock_sock", "release_sock"))),
        _Format("warning", _re(r"WARNING: .* at {SRC} {FUNC}"), "WARNING in {2}", stack=_warning()),
        _Format("lockdep", _re(r"WARNING: possible circular locking dependency detected"), "possible deadlock in {0}",
                _re(r"WARNING: possible circular locking dependency detected(?:.*\n)+?.*is trying to acquire lock"),
                _Stack((_re(r"at: (?:{PC} +)?{FUNC}"), _re(r"at: (?:{PC} +)?{FUNC}"), PARSE),
                       skip=("process_one_work", "flush_workqueue", "drain_workqueue", "destroy_workqueue"))),
        _Format("lockdep", _re(r"WARNING: possible recursive locking detected"), "possible deadlock in {0}",
                _re(r"WARNING: possible recursive locking detected(?:.*\n)+?.*is trying to acquire lock"
                    r"(?:.*\n)+?.*at: (?:{PC} +)?{FUNC}")),
        _Format("lockdep", _re(r"WARNING: inconsistent lock state"), "inconsistent lock state in {1}",
                _re(r"WARNING: inconsistent lock state(?:.*\n)+?.*takes(?:.*\n)+?.*at: (?:{PC} +)?{FUNC}"),
                _AT_TRACE),
        _Format("lockdep", _re(r"WARNING: suspicious RCU usage"), "WARNING: suspicious RCU usage in {1}",
                _re(r"WARNING: suspicious RCU usage(?:.*\n)+?.*?{SRC}"),
                _Stack((_CALL_TRACE, PARSE), skip=("rcu", "kmem", "slab"))),
        _Format("warning", _re(r"WARNING:[ \t]*(?:\n|$)"), "WARNING: corrupted"),
    )),
    "INFO:": ("hung-task", (
        _Format("rcu-stall", _re(r"INFO: rcu_(?:preempt|sched|bh) (?:self-)?detected(?: expedited)? stall"),
                "INFO: rcu detected stall in {0}",
                stack=_Stack((re.compile("apic_timer_interrupt"), _RIP, PARSE),
                             (re.compile("(?:apic_timer_interrupt|Exception stack|el1h_64_irq)"), PARSE),
                             skip=("apic_timer_interrupt", "rcu"), pick=_pick_stall)),
        _Format("hung-task", _re(r"INFO: task .* blocked for more than [0-9]+ seconds"), "INFO: task hung in {0}",
                stack=_Stack((_CALL_TRACE, PARSE), pick=_pick_hang)),
        _Format("hung-task", _re(r"INFO: task .* can't die for more than .* seconds"), "INFO: task can't die in {0}",
                stack=_Stack((_CALL_TRACE, PARSE), skip=("schedule",))),
    )),
    "Kernel panic": ("panic", (
        _Format("panic", _re(r"Kernel panic - not syncing: stack-protector:"),
                "kernel panic: stack is corrupted in {0}",
                _re(r"Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: {FUNC}")),
        _Format("panic", _re(r"Kernel panic - not syncing: stack-protector:"),
                "kernel panic: stack is corrupted in {0}",
                _re(r"Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: [a-f0-9]+"),
                _Stack((_CALL_TRACE, PARSE), skip=("stack_chk",))),
        _Format("panic", _re(r"Kernel panic - not syncing: corrupted stack end"),
                "kernel panic: corrupted stack end in {0}",
                _re(r"Kernel panic - not syncing: corrupted stack end detected inside scheduler"),
                _Stack((_CALL_TRACE, PARSE), skip=("schedule", "retint_kernel"), pick=_pick_stall)),
        _Format("panic", _re(r"Kernel panic - not syncing: kernel stack overflow"), "kernel stack overflow in {0}",
                stack=_Stack((_CALL_TRACE, PARSE), skip=("bad_stack",), pick=_pick_stall)),
        _Format("panic", _re(r"Kernel panic - not syncing: Attempted to kill init!"),
                "kernel panic: Attempted to kill init!"),
        _Format("panic", _re(r"Kernel panic - not syncing: Couldn't open N_TTY ldisc for [^ ]+ --- error -[0-9]+"),
                "kernel panic: Couldn't open N_TTY ldisc"),
        # These follow another report whose header was lost: the console was cut.
        _Format("panic", _re(r"Kernel panic - not syncing: Fatal exception"), "kernel panic: Fatal exception"),
        _Format("panic", _re(r"Kernel panic - not syncing: panic_on_warn set"), "kernel panic: panic_on_warn set"),
        _Format("panic", _re(r"Kernel panic - not syncing: hung_task: blocked tasks"),
                "kernel panic: hung_task: blocked tasks"),
        _Format("panic", _re(r"Kernel panic - not syncing: (.*)"), "kernel panic: {0}"),
    )),
    "PANIC: double fault": ("oops", (
        _Format("oops", _re(r"PANIC: double fault"), "PANIC: double fault in {0}", stack=_Stack((_RIP,))),
    )),
    "general protection fault": ("oops", (
        _Format("oops", _re(r"general protection fault.*:"), "general protection fault in {0}", stack=_AT_RIP),
    )),
    "stack segment": ("oops", (
        _Format("oops", _re(r"stack segment: "), "stack segment fault in {0}", stack=_AT_RIP),
    )),
    "kernel BUG": ("bug", (
        _Format("bug", _re(r"kernel BUG at mm/usercopy.c"), "BUG: bad usercopy in {0}",
                stack=_Stack((_CALL_TRACE, PARSE), skip=("usercopy", "__check"))),
        _Format("bug", _re(r"kernel BUG at lib/list_debug.c"), "BUG: corrupted list in {0}", stack=_AT_TRACE),
        _Format("bug", _re(r"kernel BUG at (.*)"), "kernel BUG in {1}",
                stack=_Stack((_RIP, _CALL_TRACE, PARSE), skip=("^skb_",))),
    )),
    "Kernel BUG": ("bug", (_Format("bug", _re(r"Kernel BUG (.*)"), "kernel BUG {0}"),)),
    "divide error": ("oops", (
        _Format("oops", _re(r"divide error: "), "divide error in {0}", stack=_Stack((_RIP,))),
    )),
    "invalid opcode": ("oops", (
        _Format("oops", _re(r"invalid opcode: "), "invalid opcode in {0}", stack=_Stack((_RIP,))),
    )),
    "UBSAN:": ("ubsan", (
        _Format("ubsan", _re(r"UBSAN:"), "UBSAN: undefined-behaviour in {0}", _re(r"UBSAN: Undefined behaviour in"),
                _Stack((_CALL_TRACE, PARSE), skip=_UBSAN_SKIP)),
        _Format("ubsan", _re(r"UBSAN: array-index-out-of-bounds in"), "UBSAN: array-index-out-of-bounds in {0}",
                stack=_Stack((_CALL_TRACE, PARSE), skip=_UBSAN_SKIP)),
        _Format("ubsan", _re(r"UBSAN:"), "UBSAN: {0} in {1}", _re(r"UBSAN: (.*?) in"),
                _Stack((_CALL_TRACE, PARSE), skip=_UBSAN_SKIP)),
    )),
    "Unable to handle kernel": ("oops", (
        _Format("oops", _re(r"Unable to handle kernel (paging request|NULL pointer dereference|access to user memory)"),
                "BUG: unable to handle kernel {0} in {1}", stack=_AT_RIP),
    )),
    "Internal error": ("oops", (
        _Format("oops", _re(r"Internal error:"), "Internal error in {0}", stack=_AT_RIP),
    )),
    # x86 prints "BUG: unable to handle ..." before "Oops:"; this is for consoles that lost that line.
    "Oops": ("oops", (_Format("oops", _re(r"Oops: "), "Oops in {0}", stack=_AT_RIP),)),
}  # fmt: skip


def known_shape(key: str, message: str) -> bool:
    """Whether a header line has the shape of one of its group's formats (for INFO: and WARNING:)."""
    return any(fmt.title.match(message) for fmt in GROUPS[key][1])


def _frames(text: str, parts: tuple[re.Pattern[str] | None, ...], skip: tuple[str, ...]) -> list[str]:
    """Frames found by matching parts in turn down the report's lines (syzbot's stack walk).

    A part matches on the first line from here that has it; PARSE takes a frame from each line
    until a line that starts another stack. Done on the whole text at regex speed: none of the
    patterns reaches across a newline. The text starts with a newline (see _culprit), so that
    every line, the first too, follows one.
    """
    frames: list[str] = []
    position = 0
    for part in parts:
        if part is PARSE:
            stop = _stack_start_in(text, position)
            end = (text.rfind("\n", position, stop[0]) + 1 or position) if stop else len(text)
            # PARSE always follows another part, so position is a line start after a newline.
            frames += [name for name in _FRAMES.findall(text, position - 1, end) if not _skipped(skip, name)]
            position = _next_line(text, stop[1]) if stop else len(text)
        else:
            match = part.search(text, position)
            if match is None:
                position = len(text)
                continue
            name = next((group for group in match.groups() if group), None)
            if name is not None and not _skipped(skip, name):
                frames.append(name)
            position = _next_line(text, match.end())
    return frames


def _next_line(text: str, position: int) -> int:
    newline = text.find("\n", position)
    return len(text) if newline < 0 else newline + 1


def _skipped(skip: tuple[str, ...], name: str) -> bool:
    """Whether a frame is never the culprit (generic, or in the format's own skip list)."""
    words, at_start, anywhere = _skip_rules(skip)
    return bool(words.find_matches_as_indexes(name)) or bool(at_start.match(name)) or bool(anywhere.search(name))


@functools.lru_cache(maxsize=64)
def _skip_rules(extra: tuple[str, ...]) -> tuple[AhoCorasick, re.Pattern[str], re.Pattern[str]]:
    """A skip list as its plain words, all searched in one pass, its "^" rules, tried once, and the rest.

    As one regex alternation, every rule was tried at every position of a name (~10 µs a
    frame); this way a frame costs a few microseconds, with no memory of frames seen before.
    """
    rules = (*_GENERIC_FRAMES, *extra)
    words = [rule for rule in rules if re.escape(rule) == rule]
    regexes = [rule for rule in rules if re.escape(rule) != rule]
    anchored = [rule for rule in regexes if rule.startswith("^") and "|" not in rule]
    floating = [rule for rule in regexes if rule not in anchored]
    never = "(?!)"
    at_start = "|".join(rule[1:] for rule in anchored) or never
    return AhoCorasick(words), re.compile(f"(?:{at_start})"), re.compile("|".join(floating) or never)


# The longest of the prefixes a frame starts with: an alternation takes the first that matches.
_SYSCALL_PREFIX = re.compile("|".join(sorted(map(re.escape, _SYSCALL_PREFIXES), key=len, reverse=True)))


def _strip_syscall(frame: str) -> str:
    if "sys" not in frame and "SyS" not in frame and "SYSC" not in frame:
        return frame
    match = _SYSCALL_PREFIX.match(frame)
    return frame if match is None else frame[match.end() :]


def _culprit(stack: _Stack, text: str) -> str:
    """The culprit frame in text, which runs from the title to the report's end."""
    text = "\n" + text  # the title's line counts as a line start, as "(?m)^" counted the text's start
    skip = stack.skip
    for parts in (stack.parts, stack.parts2):
        if not parts:
            continue
        frames = [_strip_syscall(frame) for frame in _frames(text, parts, skip)]
        if frames:
            frame = stack.pick(frames) if stack.pick else frames[0]
            if frame:
                return frame
    return "corrupted"


# Each group's title patterns as one alternation: one search finds where the earliest title
# starts, instead of one search of the report per format.
_FIRST_TITLE = {
    key: re.compile("|".join(f"(?:{fmt.title.pattern})" for fmt in formats)) for key, (_, formats) in GROUPS.items()
}


def describe_report(key: str, text: str) -> tuple[str, str]:
    """(title, kind) of a report: the format whose title starts earliest wins, as in syzbot.

    Among formats whose titles start at that same place, the first in the group's order whose
    report pattern (if it has one) matches too; none: the header line is the title.
    """
    default_kind, formats = GROUPS[key]
    title, kind = "", default_kind
    first = _FIRST_TITLE[key].search(text)
    if first is not None:
        for fmt in formats:
            # A title that matches at the earliest start is one whose search would start there.
            match = fmt.title.match(text, first.start())
            if match is None:
                continue
            if fmt.report is not None:
                match = fmt.report.search(text)
                if match is None:
                    continue
            args = [group or "" for group in match.groups()]
            if fmt.stack is not None:
                args.append(_culprit(fmt.stack, text[match.start() :]))
            title, kind = fmt.fmt.format(*args), fmt.kind
            break
    if not title:  # no format knows it: the header line is the title
        start = text.find(key)
        end = text.find("\n", start)
        title = text[start:] if end < 0 else text[start:end]
    return _clean_title(title), kind


# syzbot's title clean-up: what changes from run to run (addresses, numbers, line numbers,
# offsets, CPU numbers) is replaced, so that the same bug has the same title.
_VOLATILE = (
    (re.compile(r"([^a-zA-Z0-9])(?:0x)?[0-9a-f]{6,}", re.ASCII), r"\1ADDR"),
    (re.compile(r"([0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})", re.ASCII), "IP"),
    (re.compile(r"(\.\w+)(:[0-9]+)+", re.ASCII), r"\1:LINE"),
    (re.compile(r"([a-zA-Z][a-zA-Z0-9_.]+)\+0x[0-9a-z]+/0x[0-9a-z]+", re.ASCII), r"\1"),
    (re.compile(r"CPU#[0-9]+", re.ASCII), "CPU"),
    (re.compile(r"(\W)(\d+)(\W|$)", re.ASCII), r"\1NUM\3"),
    (re.compile(r"(\d+){7,}", re.ASCII), "NUM"),
)


# Where any of _VOLATILE could match: a digit, or six hex letters after a non-alphanumeric.
_ANY_VOLATILE = re.compile(r"[0-9]|[^a-zA-Z0-9][a-f]{6}", re.ASCII)


def _clean_title(title: str) -> str:
    if _ANY_VOLATILE.search(title) is not None:  # most titles ("WARNING in foo") have nothing to replace
        for pattern, replacement in _VOLATILE:
            while True:
                replaced = pattern.sub(replacement, title)
                if replaced == title:
                    break
                title = replaced
    title = title[:MAX_TITLE]
    if title.isascii() and title.isprintable() and "  " not in title:  # what the loop below would keep
        return title.strip()
    kept: list[str] = []
    for char in title[:MAX_TITLE].replace("\t", " "):
        if " " <= char < "\x7f" and not (char == " " and kept and kept[-1] == " "):
            kept.append(char)
    return "".join(kept).strip()
