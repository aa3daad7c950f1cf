"""Report mail text: prose at 72 columns, error lines, URLs and commands never wrapped."""

from __future__ import annotations

from bot.core.mail_text import (
    MAX_LINE,
    WIDTH,
    MailFailure,
    MailReport,
    error_lines_of,
    one_line,
    printable,
    render_report_mail,
    reply_subject,
    wrap_prose,
)
from bot.core.render import FailedTest, JobView

LONG_URL = "https://ci.example.org/pipelines/42?sig=" + "a1b2c3d4" * 12
LONG_ERROR = (
    "drivers/net/ethernet/intel/e1000e/netdev.c:4242:17: error: implicit declaration of function "
    "'e1000e_frobnicate'; did you mean 'e1000e_fribble'? [-Werror=implicit-function-declaration]"
)
COMMAND = ("labgate try https://git.kernel.org/pub/scm/linux/kernel/git/netdev/net-next.git "
           "--patch https://patchwork.kernel.org/series/912345/mbox/")  # fmt: skip
PROSE = ("labgate built this series on net-next and booted it on three device classes; one of them failed in "
         "a way the base branch does not, which is why this mail is sent to you and to the list in Cc.")  # fmt: skip


def _report() -> MailReport:
    return MailReport(
        verdict_line="labgate: fail: 1 new failure (build x86_64)",
        failures=(
            MailFailure(
                "labgate / build x86_64: fail: 1 error",
                LONG_ERROR + "\n  4242 | e1000e_frobnicate();",
                "https://ci.example.org/jobs/7",
            ),
        ),  # fmt: skip
        url=LONG_URL,
        reproduce=COMMAND,
        notes=(PROSE,),
    )


def test_prose_is_wrapped_at_72_and_verbatim_lines_are_kept_whole() -> None:
    body = render_report_mail(_report())
    lines = body.split("\n")
    verbatim = {"    " + LONG_ERROR, "      4242 | e1000e_frobnicate();", "    " + LONG_URL, "    " + COMMAND}
    assert verbatim <= set(lines)
    assert all(len(line) <= WIDTH for line in lines if line not in verbatim)
    # The note was reflowed, word for word.
    note_start = next(i for i, line in enumerate(lines) if line.startswith("labgate built"))
    assert " ".join(lines[note_start : note_start + 3]).split() == PROSE.split()


def test_the_verdict_line_comes_first_then_failures_link_and_how_to_reproduce() -> None:
    body = render_report_mail(_report())
    assert body.startswith("labgate: fail: 1 new failure (build x86_64)\n")
    order = [body.index(part) for part in ("New failures:", LONG_ERROR, "https://ci.example.org/jobs/7", LONG_URL,
                                            "To reproduce locally:", COMMAND)]  # fmt: skip
    assert order == sorted(order)


def test_wrapping_never_breaks_a_word_or_a_url() -> None:
    text = "see " + LONG_URL + " and net-next-2026-01-01 for the details of the failure"
    wrapped = wrap_prose(text)
    assert LONG_URL in wrapped.split("\n")
    assert "net-next-2026-01-01" in wrapped


def test_indented_quoted_and_shell_lines_are_not_prose() -> None:
    text = (
        "Some prose that is fine.\n"
        "> quoted reply line that is rather long and must be kept exactly as it is, never reflowed\n"
        "$ make -j8"
    )
    assert wrap_prose(text).split("\n") == text.split("\n")


def test_control_characters_from_a_log_do_not_reach_the_reader() -> None:
    log = "error: \x1b[31mred\x1b[0m\rOVERPRINT\u202eevil\u2028next"
    out = printable(log)
    assert "\x1b" not in out and "\r" not in out and "\u202e" not in out and "\u2028" not in out
    body = render_report_mail(MailReport("labgate: fail", (MailFailure("t", log),)))
    assert "\x1b" not in body and "\r" not in body


def test_a_huge_log_line_is_cut_not_wrapped() -> None:
    body = render_report_mail(MailReport("labgate: fail", (MailFailure("t", "x" * 100_000),)))
    [line] = [line for line in body.split("\n") if "xxx" in line]
    assert len(line) < MAX_LINE + 20 and line.endswith("[...]")


def test_first_error_lines_of_a_job() -> None:
    job = JobView(id=1, kind="test", name="qemu-x86_64 unit", state="done", result="fail",
                  failed_tests=(FailedTest("math.mul", "# expected 6\n# got 5", reason="wrong"),))  # fmt: skip
    assert error_lines_of(job) == "not ok math.mul (wrong)\n  # expected 6\n  # got 5"
    built = JobView(id=2, kind="build", name="x86_64", state="done", result="fail", log_excerpt="a\nb\nc")
    assert error_lines_of(built, limit=2) == "a\nb"


def test_subjects_are_one_line_and_get_one_re() -> None:
    assert reply_subject("[PATCH v2 0/3] net: fix\r\nBcc: victim@example.org") == (
        "Re: [PATCH v2 0/3] net: fix Bcc: victim@example.org"
    )
    assert reply_subject("RE: [PATCH] x") == "RE: [PATCH] x"
    assert one_line("a\tb\x00c\u2029d") == "a b c d"
